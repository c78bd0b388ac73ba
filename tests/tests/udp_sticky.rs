//! Unconnected UDP sticks per socket, as conntrack (kube-proxy) and Cilium's socket-cookie
//! translation keep it: every datagram of one socket reaches the backend its first one reached,
//! so a stateful exchange keeps its server state, until that backend leaves the service or the
//! socket stays idle past `--udp-sticky-timeout`. Different sockets still spread.

use std::time::Duration;

use meshpath_tests::agent::{counter, svc};
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{skip_unless, wait_until, ClientReport, Cluster, AGENT};

const VIP: &str = "10.96.0.53";

fn manifest(c: &Cluster, pods: &[usize]) -> String {
    let eps: Vec<Ep> = pods
        .iter()
        .map(|i| Ep::ready(c.node.pod(*i).ip()))
        .collect();
    docs(&[
        service("dns", VIP, 53, "5353", "UDP", ""),
        endpoint_slice("dns", 5353, "UDP", &eps),
    ])
}

/// Pods 1..=3 answer UDP 5353 as `web-1..3`; pod 0 is the client.
fn start(agent_args: &[&str]) -> Cluster {
    let c = Cluster::start(4, &[], agent_args);
    for i in 1..=3 {
        c.node
            .spawn_server(i, &format!("web-{i}"), &[], &[5353], &[])
            .expect("server");
    }
    set_backends(&c, &[1, 2, 3]);
    c
}

fn set_backends(c: &Cluster, pods: &[usize]) {
    c.write("dns.yaml", &manifest(c, pods));
    let want = pods.len();
    c.wait_status("dns backends programmed", Duration::from_secs(5), |s| {
        meshpath_tests::agent::service(s, "default/dns:")
            .is_some_and(|_| meshpath_tests::agent::backends(s, "default/dns:").len() == want)
    });
}

fn session(c: &Cluster, extra: &[&str]) -> ClientReport {
    let target = format!("{VIP}:53");
    let mut args = vec!["udp-unconnected", "--addr", &target, "--session", "1"];
    args.extend_from_slice(extra);
    let v = c.node.run_client(0, &args).expect("udp client");
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

#[test]
fn a_stateful_exchange_on_one_socket_stays_on_one_backend() {
    skip_unless!(AGENT);
    let c = start(&[]);
    let r = session(&c, &["--count", "60"]);
    assert_eq!(r.ok(), 60, "{r:?}");
    assert_eq!(r.runs.len(), 1, "one socket, one backend: {r:?}");
    assert_eq!(r.session_breaks, 0, "{r:?}");
    assert_eq!(
        r.sources.keys().collect::<Vec<_>>(),
        vec!["10.96.0.53:53"],
        "{r:?}"
    );
    let s = c.status();
    assert_eq!(counter(&s, "udp_sticky_hit"), 59, "{s:#}");
    assert_eq!(counter(&s, "udp_sticky_update_failed"), 0, "{s:#}");
    // Each new socket picks anew: 12 sockets all on one of 3 backends has p = 3·(1/3)^12.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let r = session(&c, &["--count", "3"]);
        assert_eq!(r.runs.len(), 1, "{r:?}");
        seen.insert(r.runs[0].0.clone());
    }
    assert!(seen.len() > 1, "sockets should spread: {seen:?}");
    assert_eq!(svc(&c.status(), "default/dns:")["datagrams"], 60 + 36);
}

#[test]
fn the_socket_moves_only_when_its_backend_leaves_the_service() {
    skip_unless!(AGENT);
    let c = start(&[]);
    let r = std::thread::scope(|scope| {
        let client = scope.spawn(|| session(&c, &["--duration-ms", "6000", "--interval-ms", "10"]));
        // Remove web-1, then web-2, each once the exchange has gone on meanwhile.
        for remaining in [&[2usize, 3][..], &[3][..]] {
            let hits = counter(&c.status(), "udp_sticky_hit");
            assert!(
                wait_until(Duration::from_secs(3), || counter(
                    &c.status(),
                    "udp_sticky_hit"
                ) >= hits + 20),
                "the exchange is not going on"
            );
            set_backends(&c, remaining);
        }
        client.join().expect("client thread")
    });
    assert_eq!(r.failed(), 0, "{r:?}");
    assert_eq!(r.session_breaks, 0, "{r:?}");
    eprintln!("udp_sticky: runs {:?}, datagrams {}", r.runs, r.ok());
    let names: Vec<&str> = r.runs.iter().map(|(n, _)| n.as_str()).collect();
    // A backend is left only when it leaves, never for one still serving, never returned to.
    assert_eq!(names.last(), Some(&"web-3"), "{r:?}");
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "a backend came back: {r:?}");
    // web-1 left first, then web-2: each move is to a backend left after the one it leaves.
    let rank = |n: &str| ["web-1", "web-2", "web-3"].iter().position(|x| *x == n);
    let ranks: Vec<_> = names.iter().map(|n| rank(n).expect("known")).collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{r:?}");
    // And every move was because its backend had left (not a timeout, not a fresh pick).
    let s = c.status();
    assert_eq!(
        counter(&s, "udp_sticky_stale"),
        names.len() as u64 - 1,
        "{s:#}"
    );
    assert_eq!(counter(&s, "udp_sticky_expired"), 0, "{s:#}");
}

#[test]
fn an_idle_socket_picks_anew_after_the_timeout() {
    skip_unless!(AGENT);
    let c = start(&["--udp-sticky-timeout", "1"]);
    let r = session(&c, &["--count", "2", "--interval-ms", "1500"]);
    assert_eq!(r.ok(), 2, "{r:?}");
    let s = c.status();
    assert_eq!(counter(&s, "udp_sticky_expired"), 1, "{s:#}");
    assert_eq!(counter(&s, "udp_sticky_hit"), 0, "{s:#}");
}
