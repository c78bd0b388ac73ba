//! Backend choice in the kernel: random stays within statistical bounds, round robin is exact,
//! `sessionAffinity: ClientIP` sticks until its timeout or until its backend leaves.

use std::time::{Duration, Instant};

use meshpath_tests::agent::{counter, svc};
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{addr, skip_unless, Cluster, AGENT};

const ROUND_ROBIN: &str = "  annotations:\n    meshpath.io/lb-policy: round-robin\n";

/// A Service `web` (10.96.0.10:80 → 8080) over pods 1..=3, each running `web-<i>`.
fn start(metadata_extra: &str, spec_extra: &str, pods: usize) -> Cluster {
    let c = Cluster::start(pods, &[], &[]);
    for i in 1..=3 {
        c.node
            .spawn_server(i, &format!("web-{i}"), &[8080], &[], &[])
            .expect("server");
    }
    let eps: Vec<Ep> = (1..=3).map(|i| Ep::ready(c.node.pod(i).ip())).collect();
    let svc_yaml = service("web", "10.96.0.10", 80, "8080", "TCP", spec_extra).replace(
        "  namespace: default\n",
        &format!("  namespace: default\n{metadata_extra}"),
    );
    c.write(
        "web.yaml",
        &docs(&[svc_yaml, endpoint_slice("web", 8080, "TCP", &eps)]),
    );
    c.wait_status(
        "web programmed with 3 backends",
        Duration::from_secs(5),
        |s| {
            meshpath_tests::agent::service(s, "default/web:")
                .is_some_and(|w| w["backends"].as_array().map(Vec::len) == Some(3))
        },
    );
    c
}

#[test]
fn random_spreads_3000_connections_within_statistical_bounds() {
    skip_unless!(AGENT);
    let c = start("", "", 4);
    let r = c
        .node
        .tcp(0, addr("10.96.0.10", 80), 3000)
        .expect("tcp client");
    assert_eq!(r.ok(), 3000, "{r:?}");
    // Each count is Binomial(3000, 1/3): mean 1000, sd 25.8. ±150 is beyond 5.8 sd, so a false
    // failure has probability below 1e-8, while a broken picker (always one slot, or 2 of 3) fails.
    for i in 1..=3 {
        let n = r.count(&format!("web-{i}"));
        assert!((850..=1150).contains(&n), "web-{i} got {n} of 3000: {r:?}");
    }
    assert_eq!(svc(&c.status(), "default/web:")["policy"], "random");
}

#[test]
fn round_robin_is_exact_over_3000_connections() {
    skip_unless!(AGENT);
    let c = start(ROUND_ROBIN, "", 4);
    let r = c
        .node
        .tcp(0, addr("10.96.0.10", 80), 3000)
        .expect("tcp client");
    for i in 1..=3 {
        assert_eq!(r.count(&format!("web-{i}")), 1000, "{r:?}");
    }
    let s = c.status();
    assert_eq!(svc(&s, "default/web:")["policy"], "round-robin");
    assert_eq!(svc(&s, "default/web:")["connects"], 3000);
}

#[test]
fn client_ip_affinity_sticks_until_its_timeout() {
    skip_unless!(AGENT);
    // Round robin underneath makes the choice after expiry deterministic: the cursor has moved on,
    // so an expired entry must lead to a different backend.
    let affinity = "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 2\n";
    let c = start(ROUND_ROBIN, affinity, 5);

    let first = c
        .node
        .tcp(0, addr("10.96.0.10", 80), 100)
        .expect("tcp client");
    assert_eq!(
        first.counts.len(),
        1,
        "pod 0 must stick to one backend: {first:?}"
    );
    let stuck = first.counts.keys().next().expect("one backend").clone();

    // Another client (pod 4, its own network namespace) gets its own entry: the next in turn.
    let other = c
        .node
        .tcp(4, addr("10.96.0.10", 80), 50)
        .expect("tcp client");
    assert_eq!(other.counts.len(), 1, "{other:?}");
    assert_ne!(other.counts.keys().next(), Some(&stuck), "{other:?}");

    // Within the timeout (it counts from the last connection), pod 0 still sticks. The idle
    // second is the thing under test (the entry must NOT expire within it), so it is slept.
    std::thread::sleep(Duration::from_millis(1000));
    let again = c
        .node
        .tcp(0, addr("10.96.0.10", 80), 20)
        .expect("tcp client");
    // The timeout counts from here, pod 0's last connection.
    let expires = Instant::now() + Duration::from_secs(2);
    assert_eq!(again.count(&stuck), 20, "{again:?}");

    // Idle for longer than the timeout: a new backend, and it sticks again. Nothing announces
    // the expiry (an entry expires when next looked up) and a connection to look would renew
    // it, so the deadline itself is waited for, with 500 ms of margin.
    let deadline = expires + Duration::from_millis(500);
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    let after = c
        .node
        .tcp(0, addr("10.96.0.10", 80), 20)
        .expect("tcp client");
    assert_eq!(after.counts.len(), 1, "{after:?}");
    assert_ne!(
        after.counts.keys().next(),
        Some(&stuck),
        "affinity outlived its 2 s timeout: {after:?}"
    );

    let s = c.status();
    assert_eq!(svc(&s, "default/web:")["affinity_timeout_sec"], 2);
    assert!(counter(&s, "affinity_expired") >= 1);
    assert!(
        svc(&s, "default/web:")["affinity_hits"]
            .as_u64()
            .expect("hits")
            >= 99 + 49 + 20 + 19
    );
}

#[test]
fn client_ip_affinity_ends_when_its_backend_leaves_and_only_then() {
    skip_unless!(AGENT);
    let affinity = "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 600\n";
    let c = start("", affinity, 4);
    let first = c.node.tcp(0, addr("10.96.0.10", 80), 20).expect("tcp");
    assert_eq!(first.counts.len(), 1, "{first:?}");
    let stuck = first.counts.keys().next().expect("one backend").clone();
    let rest: Vec<usize> = (1..=3).filter(|i| format!("web-{i}") != stuck).collect();
    // Another backend leaving does not move the client (its pair is still in the service).
    let keep: Vec<usize> = (1..=3).filter(|i| *i != rest[0]).collect();
    set_endpoints(&c, &keep);
    let again = c.node.tcp(0, addr("10.96.0.10", 80), 20).expect("tcp");
    assert_eq!(again.count(&stuck), 20, "{again:?}");
    assert_eq!(counter(&c.status(), "affinity_stale"), 0);
    // Its own backend leaving does, at the next connect, without the agent touching the LRU.
    set_endpoints(&c, &[rest[1]]);
    let moved = c.node.tcp(0, addr("10.96.0.10", 80), 20).expect("tcp");
    assert_eq!(moved.count(&format!("web-{}", rest[1])), 20, "{moved:?}");
    let s = c.status();
    assert_eq!(counter(&s, "affinity_stale"), 1, "{s:#}");
    assert_eq!(counter(&s, "affinity_update_failed"), 0, "{s:#}");
}

fn set_endpoints(c: &Cluster, pods: &[usize]) {
    let eps: Vec<Ep> = pods
        .iter()
        .map(|i| Ep::ready(c.node.pod(*i).ip()))
        .collect();
    let affinity = "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 600\n";
    c.write(
        "web.yaml",
        &docs(&[
            service("web", "10.96.0.10", 80, "8080", "TCP", affinity),
            endpoint_slice("web", 8080, "TCP", &eps),
        ]),
    );
    let want = pods.len();
    c.wait_status("web backends updated", Duration::from_secs(5), |s| {
        meshpath_tests::agent::service(s, "default/web:")
            .is_some_and(|w| w["backends"].as_array().map(Vec::len) == Some(want))
    });
}
