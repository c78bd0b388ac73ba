//! `connectionPool` circuit breaking: pending overflow, connection cap, requests per
//! connection, and the per-cluster stats that report them.

use std::sync::atomic::AtomicUsize;

use hyper::server::conn::http1;

use super::*;
use crate::ProxyStats;
use meshpath_model::l7::LoadBalancer::RoundRobin;

/// A backend that answers 200 after `delay` and counts its connections (accepted, and the
/// most open at once).
pub(super) struct CountingBackend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub peak: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for CountingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) async fn counting_backend(delay: Duration) -> CountingBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let open = Arc::new(AtomicUsize::new(0));
    let open_now = open.clone();
    let (acc, pk) = (accepted.clone(), peak.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let now = open.fetch_add(1, Ordering::SeqCst) + 1;
            pk.fetch_max(now, Ordering::SeqCst);
            let open = open.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                // HTTP/1.1 and h2c alike, for the upstream protocol's own limits.
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    CountingBackend {
        addr,
        accepted,
        peak,
        open: open_now,
        task,
    }
}

/// A config sending everything to cluster `a` at `addr` with `pool` limits.
pub(super) fn limited(addr: SocketAddr, pool: ConnectionPool) -> L7Config {
    let mut c = cluster(&[addr], RoundRobin);
    c.policy.connection_pool = pool;
    config(vec![route(vec![], to(&key("a")))], vec![(key("a"), c)])
}

/// A harness whose proxy's stats stay readable.
pub(super) async fn start_stats(cfg: L7Config) -> (Arc<Harness>, ProxyStats) {
    let (tx, rx) = watch::channel(Arc::new(cfg));
    let proxy = Proxy::with_options(rx, ProxyOptions::default(), None);
    let stats = proxy.stats();
    let dst = FixedDst {
        dst: Some(VIP),
        labels: BTreeMap::new(),
    };
    let tx = ConfigTx::new(tx, proxy.clone());
    let h = serve_harness(proxy, tx, dst).await;
    (Arc::new(h), stats)
}

pub(super) fn stat(stats: &ProxyStats, name: &str) -> u64 {
    stats
        .values()
        .into_iter()
        .find(|(c, s, _, _)| c == "outbound|80||a.default.svc.cluster.local" && *s == name)
        .map(|(_, _, v, _)| v)
        .unwrap_or_else(|| panic!("no stat {name}"))
}

/// `n` GETs at once, each on its own client connection.
pub(super) async fn concurrently(h: &Arc<Harness>, n: usize) -> Vec<Got> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let h = h.clone();
        set.spawn(async move { h.get("/").await });
    }
    set.join_all().await
}

#[tokio::test]
async fn pending_overflow_answers_503_overloaded_and_counts_it() {
    let b = counting_backend(Duration::from_millis(300)).await;
    let pool = ConnectionPool {
        max_connections: Some(1),
        http1_max_pending_requests: Some(1),
        ..ConnectionPool::default()
    };
    let (h, stats) = start_stats(limited(b.addr, pool.clone())).await;
    let got = concurrently(&h, 5).await;
    let overflow: Vec<&Got> = got.iter().filter(|g| g.status == 503).collect();
    let ok = got.iter().filter(|g| g.status == 200).count();
    assert!(!overflow.is_empty(), "some requests overflow: {got:?}");
    assert!(
        ok >= 2,
        "the active and the pending request succeed: {got:?}"
    );
    assert_eq!(ok + overflow.len(), 5);
    for g in &overflow {
        assert_eq!(g.header("x-envoy-overloaded"), Some("true"));
        assert_eq!(g.body, crate::forward::OVERFLOW);
    }
    assert_eq!(
        stat(&stats, "upstream_rq_pending_overflow"),
        overflow.len() as u64
    );
    assert_eq!(stat(&stats, "upstream_rq_total"), ok as u64);
    assert_eq!(stat(&stats, "upstream_rq_pending_active"), 0);
    assert_eq!(
        b.accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );

    // A config swap keeps the counters.
    h.tx.send(Arc::new(limited(b.addr, pool))).unwrap();
    assert_eq!(h.get("/").await.status, 200);
    assert_eq!(
        stat(&stats, "upstream_rq_pending_overflow"),
        overflow.len() as u64
    );
    assert_eq!(stat(&stats, "upstream_rq_total"), ok as u64 + 1);
}

#[tokio::test]
async fn max_connections_caps_upstream_connections() {
    let b = counting_backend(Duration::from_millis(100)).await;
    let pool = ConnectionPool {
        max_connections: Some(2),
        ..ConnectionPool::default()
    };
    let (h, stats) = start_stats(limited(b.addr, pool)).await;
    let got = concurrently(&h, 8).await;
    assert!(got.iter().all(|g| g.status == 200), "{got:?}");
    assert_eq!(b.peak.load(Ordering::SeqCst), 2);
    assert_eq!(
        b.accepted.load(Ordering::SeqCst),
        2,
        "connections are reused"
    );
    assert!(stat(&stats, "upstream_rq_pending_total") >= 6);
    assert!(stat(&stats, "upstream_cx_overflow") >= 6);
    assert_eq!(stat(&stats, "upstream_rq_pending_overflow"), 0);
    assert_eq!(stat(&stats, "upstream_cx_active"), 2);
    assert_eq!(stat(&stats, "circuit_breakers.default.cx_open"), 1);
    assert_eq!(stat(&stats, "circuit_breakers.default.remaining_cx"), 0);
}

#[tokio::test]
async fn max_requests_per_connection_closes_upstream_connections() {
    let b = counting_backend(Duration::ZERO).await;
    let pool = ConnectionPool {
        max_requests_per_connection: Some(1),
        ..ConnectionPool::default()
    };
    let (h, stats) = start_stats(limited(b.addr, pool)).await;
    for _ in 0..4 {
        assert_eq!(h.get("/").await.status, 200);
    }
    assert_eq!(
        b.accepted.load(Ordering::SeqCst),
        4,
        "a connection per request"
    );
    assert_eq!(stat(&stats, "upstream_cx_max_requests"), 4);

    // Without the limit, one connection carries them all.
    let b = counting_backend(Duration::ZERO).await;
    let (h, _) = start_stats(limited(b.addr, ConnectionPool::default())).await;
    for _ in 0..4 {
        assert_eq!(h.get("/").await.status, 200);
    }
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn envoy_stats_text_names_clusters_like_istio() {
    let b = counting_backend(Duration::ZERO).await;
    let (h, stats) = start_stats(limited(b.addr, ConnectionPool::default())).await;
    assert_eq!(h.get("/").await.status, 200);
    let text = stats.envoy_text();
    assert!(
        text.contains("cluster.outbound|80||a.default.svc.cluster.local.upstream_rq_total: 1\n"),
        "{text}"
    );
    assert!(text.contains(
        "cluster.outbound|80||a.default.svc.cluster.local.circuit_breakers.default.remaining_pending: 4294967295\n"
    ));
}

/// A backend that serves one request on one connection (closing it after the answer, held
/// for `delay`) and then stops listening, so later connects are refused.
async fn one_shot_backend(delay: Duration) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        drop(listener);
        let svc = service_fn(move |_req: Request<Incoming>| async move {
            tokio::time::sleep(delay).await;
            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
            resp.headers_mut()
                .insert("connection", http::HeaderValue::from_static("close"));
            Ok::<_, Infallible>(resp)
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
    (addr, task)
}

#[tokio::test]
async fn pending_requests_whose_connection_fails_count_as_failure_eject() {
    let (addr, task) = one_shot_backend(Duration::from_millis(300)).await;
    let pool = ConnectionPool {
        max_connections: Some(1),
        http1_max_pending_requests: Some(10),
        ..ConnectionPool::default()
    };
    let (h, stats) = start_stats(limited(addr, pool)).await;
    let got = concurrently(&h, 3).await;
    task.abort();
    let ok = got.iter().filter(|g| g.status == 200).count();
    let failed = got.iter().filter(|g| g.status == 503).count();
    assert_eq!((ok, failed), (1, 2), "{got:?}");
    let pending = stat(&stats, "upstream_rq_pending_total");
    let eject = stat(&stats, "upstream_rq_pending_failure_eject");
    assert!(pending >= 2, "the two later requests waited: {pending}");
    assert!(
        (2..=pending).contains(&eject),
        "each waited and then found no connection: {eject} of {pending} pending"
    );
    assert_eq!(stat(&stats, "circuit_breakers.high.rq_pending_open"), 0);
}
