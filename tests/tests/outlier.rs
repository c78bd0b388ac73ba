//! DestinationRule `outlierDetection` against the real kernel, agent and node proxy: of three
//! backends one answers 500; after its consecutive errors the proxy ejects it, so it gets no
//! HTTP requests, AND the kernel drops it from the service's TCP port (`meshpath status`), for
//! `baseEjectionTime`; then it is back in both. With a VirtualService `tcp:` route over
//! subsets, the weighted slots of the TCP port lose it too.

mod seed;

use std::path::Path;
use std::time::{Duration, Instant};

use meshpath_tests::agent::backends;
use meshpath_tests::manifests::docs;
use meshpath_tests::Cluster;
use meshpath_tests::{skip_unless, AGENT};
use seed::{http, start, wait_steered};

const VIP: &str = "10.96.0.43";
const BASE_EJECTION: Duration = Duration::from_secs(3);

const DR: &str = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: od\n  namespace: default\nspec:\n  host: od-svc\n  trafficPolicy:\n    outlierDetection:\n      consecutive5xxErrors: 2\n      interval: 1s\n      baseEjectionTime: 3s\n      maxEjectionPercent: 50\n";

/// Service `od-svc`: HTTP on 8080 (steered to the proxy by the DestinationRule) and TCP on 9000
/// (kernel path), over pods 1..=3 (pods 1 and 2 labelled `version: v1`, pod 3 `v2`).
fn service(c: &Cluster) -> String {
    let mut parts = vec![format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: od-svc\n  namespace: default\nspec:\n  clusterIP: {VIP}\n  ports:\n  - name: http\n    port: 8080\n  - name: tcp-raw\n    port: 9000\n  selector:\n    app: od-svc\n")];
    let mut eps = String::new();
    for i in 1..=3 {
        let ip = c.node.pod(i).ip();
        let v = if i < 3 { "v1" } else { "v2" };
        parts.push(format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: od-{i}\n  namespace: default\n  labels:\n    app: od-svc\n    version: {v}\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n"));
        eps.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  targetRef: {{kind: Pod, name: od-{i}}}\n"
        ));
    }
    parts.push(format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: od-svc-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: od-svc\naddressType: IPv4\nports:\n- name: http\n  port: 8080\n- name: tcp-raw\n  port: 9000\nendpoints:\n{eps}"));
    docs(&parts)
}

/// `mp-testpod serve` in pod `i`: HTTP 8080 answering `status`, TCP 9000; returns its log.
fn serve(c: &Cluster, i: usize, name: &str, status: u16) -> std::path::PathBuf {
    let log = c.node.work_dir().join(format!("{name}.requests"));
    let args = [
        "serve",
        "--name",
        name,
        "--http",
        "8080",
        "--tcp",
        "9000",
        "--http-status",
    ];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.extend([
        status.to_string(),
        "--http-log".into(),
        log.display().to_string(),
    ]);
    c.node.spawn_ready(i, name, &args).expect("server");
    log
}

fn requests(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .count()
}

fn tcp_backends(c: &Cluster) -> Vec<String> {
    backends(&c.status(), "default/od-svc:tcp")
}

#[test]
fn failing_backend_is_ejected_from_proxy_and_kernel_then_returns() {
    skip_unless!(AGENT);
    let c = start(4);
    let bad_log = serve(&c, 1, "bad", 500);
    serve(&c, 2, "good2", 200);
    serve(&c, 3, "good3", 200);
    c.write("svc.yaml", &service(&c));
    c.write("dr.yaml", DR);
    wait_steered(&c, "default/od-svc:http");
    let bad = format!("{}:9000", c.node.pod(1).ip());
    assert!(tcp_backends(&c).contains(&bad), "{:?}", tcp_backends(&c));

    // Round robin over three: 12 requests give `bad` its two consecutive 500s.
    let report = http(&c, VIP, &["--count", "12"]);
    let ejected_at = Instant::now();
    assert!(requests(&bad_log) >= 2, "{report:?}");
    c.wait_status("ejected in the kernel", Duration::from_secs(2), |s| {
        !backends(s, "default/od-svc:tcp").contains(&bad)
    });
    assert_eq!(tcp_backends(&c).len(), 2);

    // Ejected: every request goes to the two others.
    let seen = requests(&bad_log);
    let report = http(&c, VIP, &["--count", "20"]);
    assert!(
        ejected_at.elapsed() < BASE_EJECTION,
        "too slow to observe the ejection"
    );
    assert_eq!(requests(&bad_log), seen, "{report:?}");
    assert_eq!(report.counts.values().sum::<u64>(), 20, "{report:?}");

    // Back in both after baseEjectionTime.
    c.wait_status(
        "back in the kernel",
        BASE_EJECTION + Duration::from_secs(2),
        |s| backends(s, "default/od-svc:tcp").contains(&bad),
    );
    assert!(ejected_at.elapsed() >= BASE_EJECTION - Duration::from_secs(1));
    http(&c, VIP, &["--count", "6"]);
    assert!(
        requests(&bad_log) > seen,
        "ejected endpoint never came back"
    );
}

/// The DestinationRule with subsets v1/v2, and a `tcp:` route sending half of port 9000's
/// connections to each.
const SUBSETS: &str = "  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n";
const TCP_VS: &str = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: od\n  namespace: default\nspec:\n  hosts:\n  - od-svc\n  tcp:\n  - match:\n    - port: 9000\n    route:\n    - destination:\n        host: od-svc\n        subset: v1\n      weight: 50\n    - destination:\n        host: od-svc\n        subset: v2\n      weight: 50\n";

fn slots_of(backends: &[String], addr: &str) -> usize {
    backends.iter().filter(|b| *b == addr).count()
}

#[test]
fn ejected_backend_leaves_the_weighted_slots_of_tcp_routes() {
    skip_unless!(AGENT);
    let c = start(4);
    serve(&c, 1, "bad", 500);
    serve(&c, 2, "good2", 200);
    serve(&c, 3, "good3", 200);
    c.write("svc.yaml", &service(&c));
    c.write("dr.yaml", &format!("{DR}{SUBSETS}"));
    c.write("vs.yaml", TCP_VS);
    wait_steered(&c, "default/od-svc:http");
    let [bad, good2, good3] = [1, 2, 3].map(|i| format!("{}:9000", c.node.pod(i).ip()));
    c.wait_status("weighted tcp slots", Duration::from_secs(5), |s| {
        backends(s, "default/od-svc:tcp").len() == 100
    });
    let before = tcp_backends(&c);
    assert_eq!(
        (
            slots_of(&before, &bad),
            slots_of(&before, &good2),
            slots_of(&before, &good3)
        ),
        (25, 25, 50),
        "{before:?}"
    );

    http(&c, VIP, &["--count", "12"]);
    let ejected_at = Instant::now();
    c.wait_status("ejected from the v1 slots", Duration::from_secs(2), |s| {
        !backends(s, "default/od-svc:tcp").contains(&bad)
    });
    // v1's share stays v1's: its other pod takes all of it.
    let during = tcp_backends(&c);
    assert_eq!(
        (slots_of(&during, &good2), slots_of(&during, &good3)),
        (50, 50),
        "{during:?}"
    );
    assert!(ejected_at.elapsed() < BASE_EJECTION);
    let r = c
        .node
        .tcp(0, format!("{VIP}:9000").parse().expect("addr"), 200)
        .expect("tcp");
    assert_eq!(r.ok(), 200, "{r:?}");
    assert_eq!(r.count("bad"), 0, "{r:?}");

    c.wait_status(
        "back in the v1 slots",
        BASE_EJECTION + Duration::from_secs(2),
        |s| slots_of(&backends(s, "default/od-svc:tcp"), &bad) == 25,
    );
}
