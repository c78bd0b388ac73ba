//! Load balancing inside a cluster.

use std::collections::HashMap;

use super::*;

use meshpath_model::l7::LoadBalancer::{LeastRequest, Random, RoundRobin};

const NAMES: [&str; 5] = ["e0", "e1", "e2", "e3", "e4"];

async fn backends(n: usize) -> Vec<Backend> {
    let mut v = Vec::new();
    for name in &NAMES[..n] {
        v.push(backend(name).await);
    }
    v
}

fn addrs(bs: &[Backend]) -> Vec<SocketAddr> {
    bs.iter().map(|b| b.addr).collect()
}

fn one_cluster(addrs: &[SocketAddr], lb: LoadBalancer) -> L7Config {
    config(
        vec![route(vec![], to(&key("a")))],
        vec![(key("a"), cluster(addrs, lb))],
    )
}

#[tokio::test]
async fn round_robin_and_random_spread_evenly() {
    let bs = backends(4).await;
    let h = start(one_cluster(&addrs(&bs), RoundRobin)).await;
    for _ in 0..400 {
        h.get("/").await;
    }
    assert!(
        bs.iter().all(|b| b.count() == 100),
        "{:?}",
        bs.iter().map(Backend::count).collect::<Vec<_>>()
    );
    h.tx.send(Arc::new(one_cluster(&addrs(&bs), Random)))
        .unwrap();
    for _ in 0..2000 {
        h.get("/").await;
    }
    // 100 each before; Binomial(2000, 1/4): sd ≈ 19.
    assert!(
        bs.iter()
            .all(|b| (100 + 400..=100 + 600).contains(&b.count())),
        "{:?}",
        bs.iter().map(Backend::count).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn least_request_avoids_the_busy_endpoint() {
    let slow = backend_with("slow", Arc::new(|_, _| (200, Duration::from_millis(500)))).await;
    let fast = backend("fast").await;
    let h = Arc::new(start(one_cluster(&[slow.addr, fast.addr], LeastRequest)).await);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.get("/").await.status }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(
        slow.count() <= 10,
        "the busy endpoint got {} of 50",
        slow.count()
    );
}

#[tokio::test]
async fn passthrough_goes_to_the_original_destination() {
    let direct = backend("direct").await;
    let listed = backend("listed").await;
    let sr = ServiceRoutes {
        service: ObjectRef::new("default", "svc"),
        port: 80,
        http: vec![],
        default_cluster: key("svc"),
        export: Export::default(),
    };
    let cfg = L7Config {
        listeners: [(direct.addr, sr.into())].into(),
        clusters: [(
            key("svc"),
            cluster(&[listed.addr], LoadBalancer::Passthrough).into(),
        )]
        .into(),
        ..L7Config::default()
    };
    let h = start_with(
        cfg,
        FixedDst {
            dst: Some(direct.addr),
            labels: BTreeMap::new(),
        },
        None,
    )
    .await;
    assert_eq!(h.get("/").await.body, "direct");
    assert_eq!(listed.count(), 0);
}

fn hashed(key_: HashKey, algorithm: HashAlgorithm) -> LoadBalancer {
    LoadBalancer::ConsistentHash {
        key: key_,
        algorithm,
    }
}

/// user → backend name, for `users` requests carrying `x-user`.
async fn placement(h: &Harness, users: usize) -> HashMap<usize, String> {
    let mut m = HashMap::new();
    for u in 0..users {
        let got = h.get_with("/", &[("x-user", &format!("user-{u}"))]).await;
        assert_eq!(got.status, 200);
        m.insert(u, got.body);
    }
    m
}

#[tokio::test]
async fn consistent_hash_is_stable_and_moves_about_one_in_n() {
    for algorithm in [
        HashAlgorithm::RingHash {
            minimum_ring_size: 1024,
        },
        HashAlgorithm::Maglev { table_size: 65537 },
    ] {
        let bs = backends(5).await;
        let lb = hashed(HashKey::Header("x-user".into()), algorithm);
        let h = start(one_cluster(&addrs(&bs), lb.clone())).await;
        let before = placement(&h, 500).await;
        assert_eq!(
            before,
            placement(&h, 500).await,
            "{algorithm:?}: same key, same endpoint"
        );
        let used: std::collections::HashSet<_> = before.values().collect();
        assert_eq!(
            used.len(),
            5,
            "{algorithm:?}: keys spread over all endpoints"
        );
        // e2 goes away.
        let rest: Vec<SocketAddr> = bs
            .iter()
            .filter(|b| b.addr != bs[2].addr)
            .map(|b| b.addr)
            .collect();
        h.tx.send(Arc::new(one_cluster(&rest, lb))).unwrap();
        let after = placement(&h, 500).await;
        let moved = before.iter().filter(|(u, b)| after[u] != **b).count();
        let on_e2 = before.values().filter(|b| *b == "e2").count();
        assert!(after.values().all(|b| b != "e2"));
        assert!(
            moved >= on_e2,
            "{algorithm:?}: every key of the departed endpoint moves"
        );
        assert!(
            (50..=150).contains(&moved),
            "{algorithm:?}: moved {moved} of 500 (1/5 is 100)"
        );
        if matches!(algorithm, HashAlgorithm::RingHash { .. }) {
            assert_eq!(
                moved, on_e2,
                "ring hash moves only the departed endpoint's keys"
            );
        }
    }
}

#[tokio::test]
async fn hash_keys_cookie_source_ip_and_query() {
    let bs = backends(4).await;
    let ring = HashAlgorithm::RingHash {
        minimum_ring_size: 1024,
    };
    let cookie = HashKey::Cookie {
        name: "sticky".into(),
        path: Some("/".into()),
        ttl: Some(Duration::from_secs(60)),
    };
    let h = start(one_cluster(&addrs(&bs), hashed(cookie, ring))).await;
    // No cookie: the proxy issues one and routes the request where the cookie will.
    let first = h.get("/").await;
    let set = first
        .header("set-cookie")
        .expect("cookie issued")
        .to_owned();
    assert!(
        set.starts_with("sticky=\"") && set.ends_with("\"; Max-Age=60; Path=/; HttpOnly"),
        "{set}"
    );
    let value = set.split('"').nth(1).unwrap().to_owned();
    for _ in 0..10 {
        let got = h
            .get_with("/", &[("cookie", &format!("other=1; sticky=\"{value}\""))])
            .await;
        assert_eq!(got.body, first.body);
        assert!(got.header("set-cookie").is_none());
    }
    // Without a ttl no cookie is issued (and requests spread at random).
    let no_ttl = HashKey::Cookie {
        name: "sticky".into(),
        path: None,
        ttl: None,
    };
    h.tx.send(Arc::new(one_cluster(&addrs(&bs), hashed(no_ttl, ring))))
        .unwrap();
    assert!(h.get("/").await.header("set-cookie").is_none());

    // Source IP: every request comes from 127.0.0.1.
    h.tx.send(Arc::new(one_cluster(
        &addrs(&bs),
        hashed(HashKey::SourceIp, ring),
    )))
    .unwrap();
    let first = h.get("/").await.body;
    for _ in 0..10 {
        assert_eq!(h.get("/").await.body, first);
    }
    // Query parameter.
    h.tx.send(Arc::new(one_cluster(
        &addrs(&bs),
        hashed(HashKey::QueryParameter("u".into()), ring),
    )))
    .unwrap();
    let mut seen = std::collections::HashSet::new();
    for u in 0..40 {
        let first = h.get(&format!("/?u={u}")).await.body;
        assert_eq!(h.get(&format!("/x?a=1&u={u}")).await.body, first);
        seen.insert(first);
    }
    assert!(seen.len() >= 3, "query keys spread: {seen:?}");
}
