//! `warmup` (slow start): an endpoint that joins a running cluster gets a growing share.

use super::*;

use meshpath_model::l7::LoadBalancer::{LeastRequest, RoundRobin};

fn svc(addrs: &[SocketAddr], lb: LoadBalancer, warm: bool) -> L7Config {
    let mut c = cluster(addrs, lb);
    c.policy.slow_start = warm.then(|| SlowStart {
        window: Duration::from_secs(100),
        min_weight: 0.1,
        aggression: 1.0,
    });
    config(vec![], vec![(key("svc"), c)])
}

/// Requests answered by `b` out of 1000, after `b` joined the cluster `a` served alone.
async fn joining_share(lb: LoadBalancer, warm: bool) -> usize {
    let (a, b) = (backend("a").await, backend("b").await);
    let h = start(svc(&[a.addr], lb.clone(), warm)).await;
    assert_eq!(h.get("/").await.body, "a");
    h.tx.send(Arc::new(svc(&[a.addr, b.addr], lb, warm)))
        .unwrap();
    let mut to_b = 0;
    for _ in 0..1000 {
        if h.get("/").await.body == "b" {
            to_b += 1;
        }
    }
    to_b
}

#[tokio::test]
async fn a_joining_endpoint_starts_at_the_minimum_weight() {
    // Younger than a tenth of the window: weight 0.1 against 1, 1/11 of the requests
    // (binomial sd ≈ 9; ±5 sd).
    for lb in [RoundRobin, LeastRequest] {
        let share = joining_share(lb.clone(), true).await;
        assert!((45..=137).contains(&share), "{lb:?}: {share} of 1000");
    }
    // Without warmup it gets its half at once.
    let share = joining_share(RoundRobin, false).await;
    assert!((450..=550).contains(&share), "{share} of 1000");
}

#[tokio::test]
async fn endpoints_of_a_new_cluster_are_not_warmed() {
    let (a, b) = (backend("a").await, backend("b").await);
    let h = start(svc(&[a.addr, b.addr], RoundRobin, true)).await;
    let mut to_b = 0;
    for _ in 0..200 {
        if h.get("/").await.body == "b" {
            to_b += 1;
        }
    }
    assert_eq!(to_b, 100, "round robin alternates");
}
