//! `http2MaxRequests` (Envoy's `max_requests`), `maxRetries` (`max_retries`) and
//! `idleTimeout`: the limits of the cluster as a whole rather than of its connections.

use super::circuit_breaking::{concurrently, counting_backend, limited, start_stats, stat};
use super::*;

#[tokio::test]
async fn http2_max_requests_limits_active_http1_requests() {
    let b = counting_backend(Duration::from_millis(300)).await;
    let pool = ConnectionPool {
        http2_max_requests: Some(2),
        ..ConnectionPool::default()
    };
    let (h, stats) = start_stats(limited(b.addr, pool)).await;
    let probe = {
        let (h, stats) = (h.clone(), stats.clone());
        tokio::spawn(async move {
            // While two requests are in flight the breaker reports itself open.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let open = (
                stat(&stats, "circuit_breakers.default.rq_open"),
                stat(&stats, "circuit_breakers.default.remaining_rq"),
                stat(&stats, "upstream_rq_active"),
            );
            drop(h);
            open
        })
    };
    let started = std::time::Instant::now();
    let got = concurrently(&h, 5).await;
    let ok = got.iter().filter(|g| g.status == 200).count();
    let overflow: Vec<&Got> = got.iter().filter(|g| g.status == 503).collect();
    assert_eq!((ok, overflow.len()), (2, 3), "{got:?}");
    for g in &overflow {
        assert_eq!(g.header("x-envoy-overloaded"), Some("true"));
        assert_eq!(g.body, crate::forward::OVERFLOW);
    }
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(probe.await.unwrap(), (1, 0, 2));
    // Envoy counts a max_requests overflow as a pending overflow.
    assert_eq!(stat(&stats, "upstream_rq_pending_overflow"), 3);
    assert_eq!(stat(&stats, "upstream_rq_total"), 2);
    assert_eq!(stat(&stats, "upstream_rq_active"), 0);
    assert_eq!(stat(&stats, "circuit_breakers.default.rq_open"), 0);
    assert_eq!(stat(&stats, "circuit_breakers.default.remaining_rq"), 2);

    // Once the responses ended, their places are free again.
    let got = concurrently(&h, 2).await;
    assert!(got.iter().all(|g| g.status == 200), "{got:?}");
}

#[tokio::test]
async fn http2_max_requests_limits_multiplexed_http2_requests() {
    let b = backend_with("b", Arc::new(|_, _| (200, Duration::from_millis(300)))).await;
    let pool = ConnectionPool {
        http2_max_requests: Some(1),
        ..ConnectionPool::default()
    };
    let (h, stats) = start_stats(limited(b.addr, pool)).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let h = h.clone();
        set.spawn(async move {
            let req = Request::get("/")
                .version(Version::HTTP_2)
                .body(Bytes::new())
                .unwrap();
            h.send(req).await.status
        });
    }
    let mut statuses = set.join_all().await;
    statuses.sort();
    assert_eq!(statuses, vec![200, 503, 503]);
    assert_eq!(stat(&stats, "upstream_rq_pending_overflow"), 2);
    assert_eq!(stat(&stats, "upstream_rq_active"), 0);
}

#[tokio::test]
async fn unset_limits_report_envoy_defaults() {
    let b = counting_backend(Duration::ZERO).await;
    let (h, stats) = start_stats(limited(b.addr, ConnectionPool::default())).await;
    let got = concurrently(&h, 20).await;
    assert!(got.iter().all(|g| g.status == 200));
    assert_eq!(
        stat(&stats, "circuit_breakers.default.remaining_rq"),
        u64::from(u32::MAX)
    );
    assert_eq!(stat(&stats, "upstream_rq_pending_overflow"), 0);
}

/// `/slow` fails its first attempt at once, and its retry answers 200 after 500 ms; `/fast`
/// always fails at once. Both are retried (Istio's default: 2 retries on 503) unless the
/// retry budget is taken.
async fn retry_backend() -> Backend {
    backend_with(
        "r",
        Arc::new(|seen: &Seen, _| {
            let first = seen.header("x-envoy-attempt-count") == Some("1");
            match (seen.uri.as_str(), first) {
                ("/slow", false) => (200, Duration::from_millis(500)),
                _ => (503, Duration::ZERO),
            }
        }),
    )
    .await
}

fn fast_attempts(b: &Backend) -> usize {
    b.seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.uri == "/fast")
        .count()
}

#[tokio::test]
async fn max_retries_skips_retries_over_the_budget() {
    let b = retry_backend().await;
    let pool = ConnectionPool {
        max_retries: Some(1),
        ..ConnectionPool::default()
    };
    let (h, stats) = start_stats(limited(b.addr, pool)).await;
    let slow = {
        let h = h.clone();
        tokio::spawn(async move { h.get("/slow").await.status })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The slow request's retry is outstanding: the budget of one is used up.
    assert_eq!(stat(&stats, "circuit_breakers.default.rq_retry_open"), 1);
    assert_eq!(
        stat(&stats, "circuit_breakers.default.remaining_retries"),
        0
    );
    let started = std::time::Instant::now();
    let fast = h.get("/fast").await;
    assert_eq!(fast.status, 503, "the first attempt's answer, not retried");
    assert!(fast.header("x-envoy-overloaded").is_none());
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(fast_attempts(&b), 1);
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(stat(&stats, "upstream_rq_retry"), 1);
    assert_eq!(stat(&stats, "upstream_rq_retry_overflow"), 1);
    assert_eq!(stat(&stats, "upstream_rq_retry_success"), 1);
    assert_eq!(
        stat(&stats, "circuit_breakers.default.remaining_retries"),
        1
    );
    assert_eq!(stat(&stats, "circuit_breakers.default.rq_retry_open"), 0);

    // With the budget free again, `/fast` gets its two retries.
    assert_eq!(h.get("/fast").await.status, 503);
    assert_eq!(fast_attempts(&b), 4);
    assert_eq!(stat(&stats, "upstream_rq_retry"), 3);
    assert_eq!(stat(&stats, "upstream_rq_retry_overflow"), 1);
}

#[tokio::test]
async fn without_max_retries_concurrent_requests_all_retry() {
    let b = retry_backend().await;
    let (h, stats) = start_stats(limited(b.addr, ConnectionPool::default())).await;
    let slow = {
        let h = h.clone();
        tokio::spawn(async move { h.get("/slow").await.status })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(h.get("/fast").await.status, 503);
    assert_eq!(fast_attempts(&b), 3);
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(stat(&stats, "upstream_rq_retry_overflow"), 0);
    assert_eq!(
        stat(&stats, "circuit_breakers.default.remaining_retries"),
        u64::from(u32::MAX)
    );
}

/// Waits up to 2 s for `cond`.
async fn eventually(cond: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

#[tokio::test]
async fn idle_timeout_closes_idle_upstream_connections() {
    let b = counting_backend(Duration::ZERO).await;
    let pool = ConnectionPool {
        idle_timeout: Some(Duration::from_millis(300)),
        ..ConnectionPool::default()
    };
    let (h, stats) = start_stats(limited(b.addr, pool)).await;
    assert_eq!(h.get("/").await.status, 200);
    // Used again within the timeout: the same connection, whose idle time starts over.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(h.get("/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(b.open.load(Ordering::SeqCst), 1, "not idle for 300 ms yet");

    let closed = eventually(|| b.open.load(Ordering::SeqCst) == 0).await;
    assert!(closed, "the backend saw its connection close");
    assert_eq!(stat(&stats, "upstream_cx_idle_timeout"), 1);
    assert!(eventually(|| stat(&stats, "upstream_cx_active") == 0).await);

    // The next request opens a new connection, which times out in turn.
    assert_eq!(h.get("/").await.status, 200);
    assert_eq!(b.accepted.load(Ordering::SeqCst), 2);
    assert!(eventually(|| b.open.load(Ordering::SeqCst) == 0).await);
    assert_eq!(stat(&stats, "upstream_cx_idle_timeout"), 2);
}

#[tokio::test]
async fn an_idle_upstream_connection_its_peer_closed_is_dropped_from_the_pool() {
    use super::upstream_h1::{ok, raw_backend, Step};
    // Answers with keep-alive, then closes the connection while the proxy holds it idle.
    let b = raw_backend(|_, _| {
        vec![
            ok("bye"),
            Step::Pause(Duration::from_millis(200)),
            Step::Close,
        ]
    })
    .await;
    let (h, stats) = start_stats(limited(b.addr, ConnectionPool::default())).await;
    assert_eq!(h.get("/").await.status, 200);
    // No request comes to check it out: only the pool's sweep can see the close.
    let dropped = eventually(|| stat(&stats, "upstream_cx_active") == 0).await;
    assert!(
        dropped,
        "still counted {:?} after the peer closed it",
        crate::idle::SWEEP
    );
    assert_eq!(stat(&stats, "upstream_cx_idle_timeout"), 0, "not a timeout");
    assert_eq!(h.get("/").await.status, 200);
}

#[tokio::test]
async fn idle_timeout_closes_an_idle_upstream_http2_connection() {
    let b = counting_backend(Duration::ZERO).await;
    let pool = ConnectionPool {
        idle_timeout: Some(Duration::from_millis(300)),
        ..ConnectionPool::default()
    };
    let (h, stats) = start_stats(limited(b.addr, pool)).await;
    let h2 = || {
        let mut req = Request::get("/").body(Bytes::new()).unwrap();
        *req.version_mut() = Version::HTTP_2;
        h.send(req)
    };
    assert_eq!(h2().await.status, 200);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(h2().await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        b.accepted.load(Ordering::SeqCst),
        1,
        "one shared h2c connection"
    );
    assert_eq!(b.open.load(Ordering::SeqCst), 1, "not idle for 300 ms yet");
    assert!(eventually(|| b.open.load(Ordering::SeqCst) == 0).await);
    assert_eq!(stat(&stats, "upstream_cx_idle_timeout"), 1);
    // The next request opens a new one.
    assert_eq!(h2().await.status, 200);
    assert_eq!(b.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_stay_open_under_the_default_timeout() {
    let b = counting_backend(Duration::ZERO).await;
    let (h, stats) = start_stats(limited(b.addr, ConnectionPool::default())).await;
    let got = concurrently(&h, 3).await;
    assert!(got.iter().all(|g| g.status == 200));
    let opened = b.accepted.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        b.open.load(Ordering::SeqCst),
        opened,
        "Istio's default is 1 h"
    );
    assert_eq!(stat(&stats, "upstream_cx_idle_timeout"), 0);
}
