//! Config changes: built off the request path, only when the routing really changed, and
//! swapped in whole.

use super::*;
use meshpath_model::l7::LoadBalancer::RoundRobin;

fn to_a(a: SocketAddr) -> L7Config {
    config(vec![], vec![(key("svc"), cluster(&[a], RoundRobin))])
}

#[tokio::test]
async fn an_equal_config_is_not_rebuilt() {
    let a = backend("a").await;
    let h = start(to_a(a.addr)).await;
    // Separately built, same content: nothing to apply (an outlier ejection's reconcile).
    assert!(!h.tx.proxy.apply(Arc::new(to_a(a.addr))));
    let b = backend("b").await;
    assert!(h.tx.proxy.apply(Arc::new(to_a(b.addr))));
    assert_eq!(h.get("/").await.body, "b");
}

#[tokio::test]
async fn a_config_sent_on_the_channel_is_applied_by_the_follower() {
    let (a, b) = (backend("a").await, backend("b").await);
    let (tx, rx) = watch::channel(Arc::new(to_a(a.addr)));
    let proxy = Proxy::new(rx);
    let next = Arc::new(to_a(b.addr));
    tx.send(next.clone()).unwrap();
    proxy.wait_applied(&next).await;
    assert!(!proxy.apply(next), "already served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keep_flowing_while_configs_change() {
    let (a, b) = (backend("a").await, backend("b").await);
    let h = Arc::new(start(to_a(a.addr)).await);
    let swapper = {
        let h = h.clone();
        let (a, b) = (a.addr, b.addr);
        tokio::task::spawn_blocking(move || {
            for i in 0..200 {
                h.tx.proxy
                    .apply(Arc::new(to_a(if i % 2 == 0 { b } else { a })));
            }
        })
    };
    let mut served = 0;
    while !swapper.is_finished() || served < 50 {
        let got = h.get("/").await;
        assert_eq!(got.status, 200, "{got:?}");
        served += 1;
    }
    swapper.await.unwrap();
    assert!(a.count() + b.count() >= 50);
}

/// The state of cluster `k` in the served snapshot.
fn served_cluster(p: &Proxy, k: &ClusterKey) -> Arc<crate::snapshot::ClusterRt> {
    p.current.load().clusters[k].clone()
}

fn upstream_connections(p: &Proxy) -> u64 {
    p.stats()
        .values()
        .iter()
        .find(|(_, stat, _, _)| *stat == "upstream_cx_total")
        .map(|v| v.2)
        .expect("the cluster has stats")
}

#[tokio::test]
async fn a_routing_change_keeps_unchanged_clusters_and_their_connections() {
    let a = backend("a").await;
    let with_timeout = |secs: u64| {
        let mut r = route(vec![], to(&key("svc")));
        r.timeout = Some(std::time::Duration::from_secs(secs));
        config(vec![r], vec![(key("svc"), cluster(&[a.addr], RoundRobin))])
    };
    let h = start(with_timeout(30)).await;
    assert_eq!(h.get("/").await.status, 200);
    let before = served_cluster(&h.tx.proxy, &key("svc"));
    // A VirtualService edit: new routes, the same cluster.
    assert!(h.tx.proxy.apply(Arc::new(with_timeout(31))));
    let after = served_cluster(&h.tx.proxy, &key("svc"));
    assert!(Arc::ptr_eq(&before, &after), "the cluster was rebuilt");
    assert_eq!(h.get("/").await.status, 200);
    assert_eq!(
        upstream_connections(&h.tx.proxy),
        1,
        "the pooled connection was reused"
    );
    // A change to the cluster itself rebuilds it (its endpoints' pools still carry over).
    let mut changed = with_timeout(31);
    let c = changed.clusters.get_mut(&key("svc")).unwrap();
    Arc::make_mut(c).policy.connection_pool.max_retries = Some(7);
    assert!(h.tx.proxy.apply(Arc::new(changed)));
    let rebuilt = served_cluster(&h.tx.proxy, &key("svc"));
    assert!(!Arc::ptr_eq(&after, &rebuilt));
    assert_eq!(h.get("/").await.status, 200);
    assert_eq!(upstream_connections(&h.tx.proxy), 1);
}

/// Two plain-forwarding listeners, `svc` at [`VIP`] and `other` at another address.
fn two_services(svc: SocketAddr, other: SocketAddr) -> L7Config {
    let mut c = config(vec![], vec![(key("svc"), cluster(&[svc], RoundRobin))]);
    let other_vip: SocketAddr = "10.96.0.2:80".parse().unwrap();
    c.listeners.insert(
        other_vip,
        ServiceRoutes {
            service: ObjectRef::new("default", "other"),
            port: 80,
            http: vec![],
            default_cluster: key("other"),
            export: Export::default(),
        }
        .into(),
    );
    c.clusters
        .insert(key("other"), cluster(&[other], RoundRobin).into());
    c
}

#[tokio::test]
async fn an_endpoint_change_rebuilds_that_services_listener_only() {
    let (a, b, o) = (backend("a").await, backend("b").await, backend("o").await);
    let h = start(two_services(a.addr, o.addr)).await;
    let listener = |vip: SocketAddr| h.tx.proxy.current.load().listeners[&vip].clone();
    let other_vip: SocketAddr = "10.96.0.2:80".parse().unwrap();
    let (svc_before, other_before) = (listener(VIP), listener(other_vip));
    assert!(h.tx.proxy.apply(Arc::new(two_services(b.addr, o.addr))));
    assert!(
        Arc::ptr_eq(&other_before, &listener(other_vip)),
        "the unchanged Service's listener is shared"
    );
    assert!(!Arc::ptr_eq(&svc_before, &listener(VIP)));
    // The rebuilt listener sends to the new endpoint.
    assert_eq!(h.get("/").await.body, "b");
}

/// A config with VIP's listener routing everything to `other`, its own cluster `svc` at `own`.
fn routed_elsewhere(own: SocketAddr, other: SocketAddr) -> L7Config {
    config(
        vec![route(vec![], to(&key("other")))],
        vec![
            (key("svc"), cluster(&[own], RoundRobin)),
            (key("other"), cluster(&[other], RoundRobin)),
        ],
    )
}

#[tokio::test]
async fn a_dropped_listener_serves_its_connections_as_plain_forwarding_and_closes_them() {
    let (own, other) = (backend("own").await, backend("other").await);
    let h = start(routed_elsewhere(own.addr, other.addr)).await;
    assert_eq!(h.get("/").await.body, "other");
    // The frontend stops being steered here: the table no longer has its listener.
    h.tx.send(Arc::new(L7Config::default())).unwrap();
    // The connection the client holds: its Service's plain forwarding, and asked to close.
    let got = h.get("/").await;
    assert_eq!((got.status, got.body.as_str()), (200, "own"), "{got:?}");
    assert_eq!(got.header("connection"), Some("close"));
    // A new connection the kernel steered before its maps changed: the retired listener.
    let got = h.get("/").await;
    assert_eq!((got.status, got.body.as_str()), (200, "own"), "{got:?}");
    // HTTP/2: the same, and GOAWAY instead of a header.
    let req = |v| {
        http::Request::get("/")
            .version(v)
            .body(bytes::Bytes::new())
            .unwrap()
    };
    let got = h.send(req(http::Version::HTTP_2)).await;
    assert_eq!((got.status, got.body.as_str()), (200, "own"), "{got:?}");
    assert_eq!(got.header("connection"), None);
}

#[tokio::test]
async fn past_the_grace_only_the_connections_that_used_a_dropped_listener_keep_it() {
    let (own, other) = (backend("own").await, backend("other").await);
    let (tx, rx) = watch::channel(Arc::new(routed_elsewhere(own.addr, other.addr)));
    let opts = crate::ProxyOptions {
        retired_listener_grace: std::time::Duration::ZERO,
        ..crate::ProxyOptions::default()
    };
    let proxy = Proxy::with_options(rx, opts, None);
    let tx = ConfigTx::new(tx, proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dst = FixedDst {
        dst: Some(VIP),
        labels: Default::default(),
    };
    let task = tokio::spawn(crate::serve(listener, Arc::new(dst), proxy.clone()));
    let mut held = raw_connect(addr).await;
    assert!(raw_get(&mut held).await.ends_with("other"));
    // Dropped, then another table: the retired entry is past its (zero) grace.
    tx.send(Arc::new(L7Config::default())).unwrap();
    let mut unrelated = L7Config::default();
    unrelated.locality.region = "elsewhere".into();
    tx.send(Arc::new(unrelated)).unwrap();
    assert!(proxy.current.load().retired.is_empty());
    let answer = raw_get(&mut held).await;
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.ends_with("own"), "{answer}");
    task.abort();
}

async fn raw_connect(addr: SocketAddr) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

/// One keep-alive GET on `conn`: the response head (lower case) and body, read up to the
/// body's Content-Length.
async fn raw_get(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET / HTTP/1.1\r\nhost: svc.default\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
    }
}
