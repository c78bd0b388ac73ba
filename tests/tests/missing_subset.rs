//! Istio's semantics for a route to a subset no DestinationRule defines (yet), against the real
//! kernel and node proxy: the VirtualService is applied; requests routed to the missing subset
//! get Envoy's "cluster not found", 503 with flag `NC`, counted in the router's `no_cluster`;
//! its other routes work; when the DestinationRule gains the subset, the route works.

use std::time::Duration;

use meshpath_tests::agent::{meshpath, steered_to_proxy};
use meshpath_tests::manifests::docs;
use meshpath_tests::{skip_unless, Cluster, AGENT};

const REVIEWS: &str = "10.96.0.30";

fn rule(subsets: &[&str]) -> String {
    let mut s = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  subsets:\n".to_owned();
    for v in subsets {
        s.push_str(&format!("  - name: {v}\n    labels:\n      version: {v}\n"));
    }
    s
}

/// Pods 1 and 2 run reviews v1 and v2; pod 0 is the client.
fn cluster_yaml(c: &Cluster) -> String {
    let ip = |i: usize| c.node.pod(i).ip();
    let mut parts = vec![format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: reviews\nspec:\n  clusterIP: {REVIEWS}\n  ports:\n  - name: http\n    port: 9080\n  selector:\n    app: reviews\n")];
    let mut eps = String::new();
    for (i, v) in [(1, "v1"), (2, "v2")] {
        parts.push(format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: reviews-{v}\n  labels:\n    app: reviews\n    version: {v}\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {}\n", ip(i)));
        eps.push_str(&format!(
            "- addresses: [\"{}\"]\n  targetRef: {{kind: Pod, name: reviews-{v}}}\n",
            ip(i)
        ));
    }
    parts.push(format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: reviews-1\n  labels:\n    kubernetes.io/service-name: reviews\naddressType: IPv4\nports:\n- name: http\n  port: 9080\nendpoints:\n{eps}"));
    docs(&parts)
}

/// `end-user: jason` → v2, everything else → v1.
const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts:\n  - reviews\n  http:\n  - match:\n    - headers:\n        end-user:\n          exact: jason\n    route:\n    - destination:\n        host: reviews\n        subset: v2\n  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";

fn http(c: &Cluster, count: u32, header: Option<&str>) -> meshpath_tests::ClientReport {
    let a = format!("{REVIEWS}:9080");
    let n = count.to_string();
    let mut args = vec!["http", "--addr", &a, "--count", &n];
    if let Some(h) = header {
        args.extend_from_slice(&["--header", h]);
    }
    serde_json::from_value(c.node.run_client(0, &args).expect("http client")).expect("report")
}

#[test]
fn a_subset_not_defined_yet_answers_503_nc_until_the_rule_defines_it() {
    skip_unless!(AGENT);
    let c = Cluster::with_proxy(3, |_| vec![]);
    let admin = c.agent.admin_addr().expect("admin address").to_owned();
    for (i, name) in [(1, "reviews-v1"), (2, "reviews-v2")] {
        c.node
            .spawn_server(i, name, &[], &[], &[9080])
            .expect("server");
    }
    c.write("cluster.yaml", &cluster_yaml(&c));
    c.write("rule.yaml", &rule(&["v1"]));
    c.write("reviews-vs.yaml", VS);
    c.wait_status(
        "reviews steered to the proxy",
        Duration::from_secs(5),
        |s| steered_to_proxy(s, "default/reviews:"),
    );

    let v2 = http(&c, 20, Some("end-user: jason"));
    assert_eq!(v2.counts.values().sum::<u64>(), 0, "{v2:?}");
    let answers: u64 = v2
        .answers
        .iter()
        .filter(|(k, _)| k.trim() == "503")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(answers, 20, "20 empty 503s: {v2:?}\n{}", c.agent.log());
    let v1 = http(&c, 20, None);
    assert_eq!(v1.count("reviews-v1"), 20, "the other route works: {v1:?}");
    let stats = meshpath(["stats", "no_cluster", "--admin-addr", &admin]).expect("stats");
    assert!(
        stats
            .lines()
            .any(|l| l == "http.outbound_0.0.0.0_9080.no_cluster: 20"),
        "{stats}"
    );
    c.wait_log(
        &[
            "Service default/reviews is not defined",
            "requests routed to it get 503 (no cluster)",
        ],
        Duration::from_secs(5),
    );

    // The DestinationRule gains v2: nothing else changes, and v2 is served.
    c.write("rule.yaml", &rule(&["v1", "v2"]));
    let mut last = None;
    let served = meshpath_tests::wait_until(Duration::from_secs(5), || {
        let r = http(&c, 1, Some("end-user: jason"));
        let ok = r.count("reviews-v2") == 1;
        last = Some(r);
        ok
    });
    assert!(
        served,
        "v2 not served after the rule gained it: {last:?}\n{}",
        c.agent.log()
    );
    assert_eq!(
        http(&c, 20, Some("end-user: jason")).count("reviews-v2"),
        20
    );
    assert_eq!(http(&c, 20, None).count("reviews-v1"), 20);
}
