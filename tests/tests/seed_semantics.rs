//! The seed's DestinationRule semantics against the real kernel, agent and node proxy:
//! `loadBalancer.simple` takes effect where it can be enforced (ROUND_ROBIN and RANDOM in the
//! kernel, LEAST_REQUEST by the proxy, PASSTHROUGH as the original destination) and `meshpath
//! status` says where and why; an HTTP port with no ready endpoint answers 503 "no healthy
//! upstream" like the seed's Envoy, unless switched off.

mod seed;

use std::io::{Read, Write};
use std::time::Duration;

use meshpath_tests::agent::{steered_to_proxy, svc};
use meshpath_tests::manifests::docs;
use meshpath_tests::{addr, skip_unless, Cluster, AGENT};
use seed::{app, http, serve};

const VIP: &str = "10.96.0.44";
const NAME: &str = "default/web-svc:";

fn rule(lb: &str) -> String {
    format!("apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: web-dr\n  namespace: default\nspec:\n  host: web-svc\n  trafficPolicy:\n    loadBalancer:\n      {lb}\n")
}

/// web-svc (`http` 8080) over pods 1..=3 answering `v1`..`v3` (HTTP when `http`, else the
/// TCP name line), with `dr`.
fn start(c: &Cluster, dr: &str, http: bool) {
    for i in 1..=3 {
        let name = format!("v{i}");
        if http {
            serve(c, i, &name, 0);
        } else {
            c.node
                .spawn_server(i, &name, &[8080], &[], &[])
                .expect("server");
        }
    }
    let members = [(1, "v1"), (2, "v2"), (3, "v3")];
    c.write(
        "web.yaml",
        &docs(&[app(c, "web-svc", VIP, &members), dr.to_string()]),
    );
}

/// Waits until status shows `lb` for web-svc, enforced in `where_` (the kernel with
/// `backends` backends).
fn wait_lb(c: &Cluster, lb: &str, where_: &str, backends: usize) -> serde_json::Value {
    let what = format!("{lb} enforced in {where_}");
    c.wait_status(&what, Duration::from_secs(5), |s| {
        meshpath_tests::agent::service(s, NAME).is_some_and(|w| {
            w["lb"]["name"] == lb
                && w["lb"]["enforced"] == where_
                && (where_ == "proxy" || w["backends"].as_array().map(Vec::len) == Some(backends))
        })
    });
    svc(&c.status(), NAME).clone()
}

/// The backend of each of `n` connections, in order (one client run per connection).
fn sequence(c: &Cluster, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = c.node.tcp(0, addr(VIP, 8080), 1).expect("tcp client");
            assert_eq!(r.ok(), 1, "{r:?}");
            r.counts.keys().next().expect("one answer").clone()
        })
        .collect()
}

/// Whether `seq` repeats one order of its three backends.
fn alternates(seq: &[String]) -> bool {
    let first: std::collections::BTreeSet<_> = seq[..3].iter().collect();
    first.len() == 3 && seq.iter().enumerate().all(|(i, b)| *b == seq[i % 3])
}

#[test]
fn round_robin_rule_alternates_exactly_in_the_kernel() {
    skip_unless!(AGENT);
    // The agent's default is random: only the rule makes it round robin.
    let c = Cluster::with_proxy(4, |_| vec![]);
    start(&c, &rule("simple: ROUND_ROBIN"), false);
    let w = wait_lb(&c, "ROUND_ROBIN", "kernel", 3);
    assert_eq!(w["policy"], "round-robin", "{w:#}");
    assert_eq!(w["lb"]["from"], "DestinationRule");
    assert!(!steered_to_proxy(&c.status(), NAME));
    let seq = sequence(&c, 30);
    assert!(alternates(&seq), "not an exact alternation: {seq:?}");
    let r = c.node.tcp(0, addr(VIP, 8080), 300).expect("tcp client");
    for i in 1..=3 {
        assert_eq!(r.count(&format!("v{i}")), 100, "{r:?}");
    }
}

#[test]
fn random_rule_hits_every_backend_without_alternating() {
    skip_unless!(AGENT);
    // The agent's default is round robin: only the rule makes it random.
    let c = Cluster::with_proxy(4, |_| {
        vec!["--default-lb-policy".into(), "round-robin".into()]
    });
    start(&c, &rule("simple: RANDOM"), false);
    let w = wait_lb(&c, "RANDOM", "kernel", 3);
    assert_eq!(w["policy"], "random", "{w:#}");
    let r = c.node.tcp(0, addr(VIP, 8080), 300).expect("tcp client");
    assert_eq!(r.ok(), 300, "{r:?}");
    // Binomial(300, 1/3): mean 100, sd 8.2; 50 is 6 sd below.
    for i in 1..=3 {
        let n = r.count(&format!("v{i}"));
        assert!(n >= 50, "v{i} got {n} of 300: {r:?}");
    }
    // An exact cycle of 30 random picks has probability 6 × 3^-30.
    let seq = sequence(&c, 30);
    assert!(!alternates(&seq), "random alternated exactly: {seq:?}");
}

#[test]
fn least_request_is_steered_to_the_proxy() {
    skip_unless!(AGENT);
    let c = Cluster::with_proxy(4, |_| vec![]);
    start(&c, &rule("simple: LEAST_REQUEST"), true);
    let w = wait_lb(&c, "LEAST_REQUEST", "proxy", 0);
    assert!(
        w["lb"]["why"]
            .as_str()
            .unwrap_or("")
            .contains("per request"),
        "{w:#}"
    );
    assert!(steered_to_proxy(&c.status(), NAME));
    let r = http(&c, VIP, &["--count", "30"]);
    assert_eq!(r.ok(), 30, "{r:?}");
    // Sequential requests: every endpoint has 0 in flight, and ties are broken at random.
    assert!(r.counts.len() >= 2, "{r:?}");
    let text = meshpath_tests::agent::meshpath([
        "status",
        "--pin-dir",
        c.node.pin_dir().to_str().expect("utf-8"),
    ])
    .expect("meshpath status");
    eprintln!("$ meshpath status\n{text}");
    assert!(
        text.contains("lb LEAST_REQUEST (DestinationRule): proxy:"),
        "{text}"
    );
}

#[test]
fn passthrough_goes_to_the_address_asked_for() {
    skip_unless!(AGENT);
    let c = Cluster::with_proxy(4, |_| {
        vec!["--default-lb-policy".into(), "round-robin".into()]
    });
    start(&c, &rule("simple: PASSTHROUGH"), false);
    let w = wait_lb(&c, "PASSTHROUGH", "kernel", 3);
    // The ClusterIP has no pod: it is translated as kube-proxy would, with the Service's own
    // policy (here the agent's default), not steered to the proxy.
    assert_eq!(w["policy"], "round-robin", "{w:#}");
    assert!(
        w["lb"]["why"].as_str().unwrap_or("").contains("ClusterIP"),
        "{w:#}"
    );
    assert!(!steered_to_proxy(&c.status(), NAME));
    let seq = sequence(&c, 9);
    assert!(alternates(&seq), "{seq:?}");
    // A pod's own address is the original destination: never translated.
    for i in 1..=3 {
        let pod = c.node.pod(i).ip().to_string();
        let r = c.node.tcp(0, addr(&pod, 8080), 5).expect("tcp client");
        assert_eq!(r.count(&format!("v{i}")), 5, "{r:?}");
    }
}

fn metrics(c: &Cluster) -> String {
    let admin = c.agent.admin_addr().expect("admin address");
    let mut s = std::net::TcpStream::connect(admin).expect("admin");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// web-svc with pod 1 as its one endpoint, or none.
fn one_endpoint(c: &Cluster, ready: bool) {
    let members: &[(usize, &str)] = if ready { &[(1, "v1")] } else { &[] };
    let mut y = app(c, "web-svc", VIP, members);
    if !ready {
        y = y.replace("endpoints:\n", "endpoints: []\n");
    }
    c.write("web.yaml", &y);
}

#[test]
fn http_port_without_endpoints_answers_503_no_healthy_upstream() {
    skip_unless!(AGENT);
    let c = Cluster::with_proxy(2, |_| vec![]);
    serve(&c, 1, "v1", 0);
    one_endpoint(&c, true);
    wait_lb(&c, "random", "kernel", 1);
    assert_eq!(http(&c, VIP, &[]).count("v1"), 1);

    // Scaled to zero: the EndpointSlice has no endpoint left.
    one_endpoint(&c, false);
    let w = wait_lb(&c, "random", "proxy", 0);
    assert!(
        w["lb"]["why"].as_str().unwrap_or("").contains("503"),
        "{w:#}"
    );
    let r = http(&c, VIP, &["--count", "3"]);
    assert_eq!(
        r.answers.get("503 no healthy upstream"),
        Some(&3),
        "{r:?}\n{}",
        c.agent.log()
    );
    let m = metrics(&c);
    assert!(
        m.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"503\"")
            && l.contains("response_flags=\"UH\"")
            && l.ends_with(" 3")),
        "{m}"
    );

    // Endpoints back: the kernel path again, answered by the pod.
    one_endpoint(&c, true);
    wait_lb(&c, "random", "kernel", 1);
    assert!(!steered_to_proxy(&c.status(), NAME));
    assert_eq!(http(&c, VIP, &["--count", "3"]).count("v1"), 3);
}

#[test]
fn without_the_switch_no_endpoint_refuses_the_connection() {
    skip_unless!(AGENT);
    let c = Cluster::with_proxy(2, |_| vec!["--http-no-endpoint-503".into(), "false".into()]);
    one_endpoint(&c, false);
    c.wait_status("web-svc programmed, empty", Duration::from_secs(5), |s| {
        meshpath_tests::agent::service(s, NAME).is_some_and(|w| {
            w["backends"].as_array().is_some_and(Vec::is_empty) && w["lb"]["enforced"] == "kernel"
        })
    });
    let r = c.node.tcp(0, addr(VIP, 8080), 3).expect("tcp client");
    assert_eq!(r.errors.get("ECONNREFUSED"), Some(&3), "{r:?}");
}
