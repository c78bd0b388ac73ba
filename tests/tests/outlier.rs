//! DestinationRule `outlierDetection` against the real kernel, agent and node proxy: of three
//! backends one answers 500; after its consecutive errors the proxy ejects it, so it gets no
//! HTTP requests, AND the kernel drops it from the service's TCP port (`meshpath status`), for
//! `baseEjectionTime`; then it is back in both.

mod common;
mod seed;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{backends, Cluster};
use meshpath_tests::manifests::docs;
use seed::{http, start, wait_steered};

const VIP: &str = "10.96.0.43";
const BASE_EJECTION: Duration = Duration::from_secs(3);

const DR: &str = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: od\n  namespace: default\nspec:\n  host: od-svc\n  trafficPolicy:\n    outlierDetection:\n      consecutive5xxErrors: 2\n      interval: 1s\n      baseEjectionTime: 3s\n      maxEjectionPercent: 50\n";

/// Service `od-svc`: HTTP on 8080 (steered to the proxy by the DestinationRule) and TCP on 9000
/// (kernel path), over pods 1..=3.
fn service(c: &Cluster) -> String {
    let mut parts = vec![format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: od-svc\n  namespace: default\nspec:\n  clusterIP: {VIP}\n  ports:\n  - name: http\n    port: 8080\n  - name: tcp-raw\n    port: 9000\n  selector:\n    app: od-svc\n")];
    let mut eps = String::new();
    for i in 1..=3 {
        let ip = c.node.pod(i).ip();
        parts.push(format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: od-{i}\n  namespace: default\n  labels:\n    app: od-svc\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n"));
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
