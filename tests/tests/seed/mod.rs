//! The seed's YAML (copied verbatim into this directory) and the cluster the l7_seed tests run
//! it on: the seed's services, each version in its own pod, behind the node proxy.
#![allow(dead_code)] // helpers for tests/l7_seed.rs

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshpath_tests::agent::steered_to_proxy;
use meshpath_tests::manifests::docs;
use meshpath_tests::{wait_until, ClientReport, Cluster};

pub const WEIGHTED: &str = include_str!("weighted.yaml");
pub const LOAD_BALANCING: &str = include_str!("load_balancing.yaml");
pub const FAULT_ABORT: &str = include_str!("fault_abort.yaml");
pub const FAULT_DELAY: &str = include_str!("fault_delay.yaml");
pub const MIRROR: &str = include_str!("mirror.yaml");

/// ClusterIPs of the seed's two services.
pub const APP: &str = "10.96.0.40"; // springboot-app-svc
pub const MY_SVC: &str = "10.96.0.41"; // my-svc

/// The seed's VirtualServices name subsets of springboot-app-svc whose DestinationRule the seed
/// does not show (Kiali's wizard wrote it); this is the obvious one.
pub const APP_DR: &str = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: springboot-app-svc\n  namespace: default\nspec:\n  host: springboot-app-svc.default.svc.cluster.local\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n  - name: v3\n    labels:\n      version: v3\n";

/// Routes `x-subset: vN` to the seed's subset vN.
pub const MY_SVC_VS: &str = "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: my-svc\nspec:\n  hosts:\n  - my-svc\n  http:\n  - match:\n    - headers:\n        x-subset:\n          exact: v1\n    route:\n    - destination:\n        host: my-svc\n        subset: v1\n  - match:\n    - headers:\n        x-subset:\n          exact: v2\n    route:\n    - destination:\n        host: my-svc\n        subset: v2\n  - route:\n    - destination:\n        host: my-svc\n        subset: v3\n";

/// A node with `pods` pods (pod 0 is the client) and the agent with its node proxy.
pub fn start(pods: usize) -> Cluster {
    Cluster::with_proxy(pods, |_| vec![])
}

/// Service `name` (HTTP on 8080) with one labelled Pod and endpoint per `(pod index, version)`.
pub fn app(c: &Cluster, name: &str, vip: &str, members: &[(usize, &str)]) -> String {
    let mut parts = vec![format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {vip}\n  ports:\n  - name: http\n    port: 8080\n  selector:\n    app: {name}\n")];
    let mut eps = String::new();
    for &(i, v) in members {
        let ip = c.node.pod(i).ip();
        parts.push(format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}-{i}\n  namespace: default\n  labels:\n    app: {name}\n    version: {v}\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n"));
        eps.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  targetRef: {{kind: Pod, name: {name}-{i}}}\n"
        ));
    }
    parts.push(format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\nendpoints:\n{eps}"));
    docs(&parts)
}

/// springboot-app-svc with pods 1, 2, 3 as v1, v2, v3 (answering `v1`, `v2`, `v3`), its
/// DestinationRule and `vs` (none if empty); returns the request logs of v1..v3. `slow` delays
/// one version.
pub fn springboot(c: &Cluster, vs: &str, slow: Option<(&str, u64)>) -> Vec<PathBuf> {
    let logs = (1..=3)
        .map(|i| {
            let v = format!("v{i}");
            let delay = slow.filter(|s| s.0 == v).map_or(0, |s| s.1);
            serve(c, i, &v, delay)
        })
        .collect();
    let members = [(1, "v1"), (2, "v2"), (3, "v3")];
    c.write(
        "app.yaml",
        &docs(&[app(c, "springboot-app-svc", APP, &members), APP_DR.into()]),
    );
    if vs.is_empty() {
        // No VirtualService: the kernel path, straight to the pods.
        c.wait_status("kernel path", Duration::from_secs(5), |s| {
            meshpath_tests::agent::service(s, "default/springboot-app-svc:")
                .is_some_and(|r| r["backends"].as_array().map(Vec::len) == Some(3))
        });
    } else {
        c.write("vs.yaml", vs);
        wait_steered(c, "default/springboot-app-svc:");
    }
    logs
}

/// `mp-testpod serve` on 8080 in pod `i`, answering `name` after `delay_ms`, logging every
/// request's Host; returns that log.
pub fn serve(c: &Cluster, i: usize, name: &str, delay_ms: u64) -> PathBuf {
    let log = c.node.work_dir().join(format!("{name}.requests"));
    let args = ["serve", "--name", name, "--http", "8080", "--http-delay-ms"];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.extend([delay_ms.to_string(), "--http-log".into()]);
    args.push(log.display().to_string());
    c.node.spawn_ready(i, name, &args).expect("server");
    log
}

/// The Host header of every request a server saw.
pub fn hosts(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = |l: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(l).expect("request log line");
        v["host"].as_str().unwrap_or("").to_string()
    };
    text.lines().map(line).collect()
}

/// Waits until the kernel steers `svc` to the proxy (the proxy has the table by then).
pub fn wait_steered(c: &Cluster, svc: &str) {
    c.wait_status("steered to the proxy", Duration::from_secs(5), |s| {
        steered_to_proxy(s, svc)
    });
}

/// `mp-testpod http` from pod 0 to `vip:8080` with extra client arguments.
pub fn http(c: &Cluster, vip: &str, args: &[&str]) -> ClientReport {
    let addr = format!("{vip}:8080");
    let mut all = vec!["http", "--addr", &addr];
    all.extend_from_slice(args);
    let v = c.node.run_client(0, &all).expect("http client");
    serde_json::from_value(v).expect("report")
}

pub fn unix_us() -> u64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    u64::try_from(d.as_micros()).expect("µs")
}

/// Sends single requests without `end-user` until one satisfies `done` (an edit took effect).
pub fn wait_edit(c: &Cluster, done: impl Fn(&ClientReport) -> bool) {
    let applied = wait_until(Duration::from_secs(5), || done(&http(c, APP, &[])));
    assert!(applied, "edit not applied:\n{}", c.agent.log());
}

/// How many requests the servers of [`serve`] have logged so far, together.
fn served(c: &Cluster) -> usize {
    let Ok(dir) = std::fs::read_dir(c.node.work_dir()) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "requests"))
        .map(|e| std::fs::read_to_string(e.path()).map_or(0, |t| t.lines().count()))
        .sum()
}

/// Runs the client (with `extra` arguments) for 2 s, a request every 2 ms over one keep-alive
/// connection, while `edit` runs once the servers have answered `before` requests of it; returns
/// the requests and the Unix µs at which `edit` started.
pub fn traffic_during(
    c: &Cluster,
    extra: &[&str],
    before: usize,
    edit: impl FnOnce(),
) -> (ClientReport, u64) {
    let base = served(c);
    std::thread::scope(|s| {
        let client = s.spawn(|| {
            let args = [
                "--duration-ms",
                "2000",
                "--interval-ms",
                "2",
                "--per-request",
                "1",
            ];
            http(c, APP, &[&args[..], extra].concat())
        });
        // The edit must land inside the run with traffic before it: wait for that traffic.
        let flowing = wait_until(Duration::from_secs(2), || served(c) >= base + before);
        assert!(
            flowing,
            "the servers saw fewer than {before} requests within 2 s"
        );
        let at = unix_us();
        edit();
        (client.join().expect("client thread"), at)
    })
}
