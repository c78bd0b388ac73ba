//! A VirtualService `tcp:` route to a subset no DestinationRule defines, on the pure kernel
//! path. Envoy's TCP proxy closes a connection whose weighted cluster does not exist; the kernel
//! refuses that share of connects at once (ECONNREFUSED, counted as `no_backend`) while the
//! defined subset's share is served, and the route works once the rule gains the subset.

use std::time::Duration;

use meshpath_tests::agent::counter;
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{addr, skip_unless, wait_until, Cluster, AGENT};

const VIP: &str = "10.96.0.45";

fn pod(name: &str, version: &str, ip: std::net::Ipv4Addr) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: sub\n    version: {version}\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n")
}

fn rule(subsets: &[&str]) -> String {
    let mut s = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: sub\nspec:\n  host: sub\n  subsets:\n".to_owned();
    for v in subsets {
        s.push_str(&format!("  - name: {v}\n    labels:\n      version: {v}\n"));
    }
    s
}

const SPLIT: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: sub\nspec:\n  hosts:\n  - sub\n  tcp:\n  - route:\n    - destination:\n        host: sub\n        subset: v1\n      weight: 50\n    - destination:\n        host: sub\n        subset: v2\n      weight: 50\n";

#[test]
fn a_tcp_route_to_a_missing_subset_refuses_its_share_until_the_rule_defines_it() {
    skip_unless!(AGENT);
    let c = Cluster::start(3, &[], &[]);
    for (i, name) in [(1, "v1"), (2, "v2")] {
        c.node
            .spawn_server(i, name, &[8080], &[], &[])
            .expect("server");
    }
    let (ip1, ip2) = (c.node.pod(1).ip(), c.node.pod(2).ip());
    c.write(
        "sub.yaml",
        &docs(&[
            pod("sub-v1", "v1", ip1),
            pod("sub-v2", "v2", ip2),
            service("sub", VIP, 80, "8080", "TCP", ""),
            endpoint_slice("sub", 8080, "TCP", &[Ep::ready(ip1), Ep::ready(ip2)]),
            SPLIT.to_owned(),
        ]),
    );
    c.write("rule.yaml", &rule(&["v1"]));
    // Programmed once v1's share lands on v1 alone.
    let mut last = None;
    let programmed = wait_until(Duration::from_secs(5), || {
        let r = c.node.tcp(0, addr(VIP, 80), 20).expect("tcp");
        let ok = !r.counts.contains_key("v2") && r.errors.contains_key("ECONNREFUSED");
        last = Some(r);
        ok
    });
    assert!(
        programmed,
        "split not programmed: {last:?}\n{:#}",
        c.status()
    );

    let before = counter(&c.status(), "no_backend");
    let r = c.node.tcp(0, addr(VIP, 80), 200).expect("tcp");
    let refused = r.errors.get("ECONNREFUSED").copied().unwrap_or(0);
    let v1 = r.counts.get("v1").copied().unwrap_or(0);
    assert_eq!(r.counts.get("v2"), None, "v2 is no subset yet: {r:?}");
    assert_eq!(v1 + refused, 200, "{r:?}");
    assert!(refused > 50 && refused < 150, "about half refused: {r:?}");
    assert_eq!(
        counter(&c.status(), "no_backend") - before,
        refused,
        "each refusal counted"
    );

    // The rule gains v2: both shares are served, nothing refused.
    c.write("rule.yaml", &rule(&["v1", "v2"]));
    let served = wait_until(Duration::from_secs(5), || {
        let r = c.node.tcp(0, addr(VIP, 80), 40).expect("tcp");
        let ok = r.errors.is_empty() && r.counts.get("v2").is_some_and(|n| *n > 0);
        last = Some(r);
        ok
    });
    assert!(served, "v2 not served after the rule gained it: {last:?}");
}
