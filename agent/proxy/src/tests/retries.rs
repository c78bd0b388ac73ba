//! Retries, timeouts and upstream failures.

use std::time::Instant;

use super::*;

use meshpath_model::l7::LoadBalancer::RoundRobin;

fn retrying(attempts: u32, per_try: Option<Duration>, on: Vec<RetryOn>) -> HttpRoute {
    let mut r = route(vec![], to(&key("a")));
    r.retries = Some(RetryPolicy {
        attempts,
        per_try_timeout: per_try,
        retry_on: on,
        backoff: None,
    });
    r
}

/// Fails the first request with `status`, then answers 200.
fn fail_first(status: u16) -> Behavior {
    Arc::new(move |_, n| (if n == 0 { status } else { 200 }, Duration::ZERO))
}

#[tokio::test]
async fn a_failed_first_attempt_is_retried() {
    let a = backend_with("a", fail_first(503)).await;
    let r = retrying(2, None, vec![RetryOn::FiveXx]);
    let h = start(config(
        vec![r],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    let req = Request::post("/")
        .body(Bytes::from_static(b"payload"))
        .unwrap();
    let got = h.send(req).await;
    assert_eq!((got.status, got.body.as_str()), (200, "a"));
    assert_eq!(a.count(), 2);
    let seen = a.seen.lock().unwrap().clone();
    assert_eq!(&seen[1].body[..], b"payload", "the body is replayed");
    assert_eq!(seen[0].header("x-envoy-attempt-count"), Some("1"));
    assert_eq!(seen[1].header("x-envoy-attempt-count"), Some("2"));
}

#[tokio::test]
async fn retry_conditions() {
    // gateway-error does not cover 500; retriable-4xx is 409 only.
    for (status, on, retried) in [
        (500, RetryOn::GatewayError, false),
        (502, RetryOn::GatewayError, true),
        (409, RetryOn::RetriableStatus4xx, true),
        (404, RetryOn::RetriableStatus4xx, false),
        (500, RetryOn::FiveXx, true),
        (503, RetryOn::ConnectFailure, false),
    ] {
        let a = backend_with("a", fail_first(status)).await;
        let h = start(config(
            vec![retrying(1, None, vec![on])],
            vec![(key("a"), cluster(&[a.addr], RoundRobin))],
        ))
        .await;
        let got = h.get("/").await;
        assert_eq!(
            got.status,
            if retried { 200 } else { status },
            "{status} with {on:?}"
        );
        assert_eq!(a.count(), if retried { 2 } else { 1 });
    }
    // Retries exhausted: the last answer goes to the client.
    let a = backend_with("a", Arc::new(|_, _| (503, Duration::ZERO))).await;
    let h = start(config(
        vec![retrying(2, None, vec![RetryOn::FiveXx])],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    assert_eq!(h.get("/").await.status, 503);
    assert_eq!(a.count(), 3);
    // No policy on the route: Istio's default retries 503 twice.
    let a = backend_with("a", fail_first(503)).await;
    let h = start(config(
        vec![route(vec![], to(&key("a")))],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    assert_eq!(h.get("/").await.status, 200);
    // attempts: 0 disables retries.
    let a = backend_with("a", fail_first(503)).await;
    let h = start(config(
        vec![retrying(0, None, vec![RetryOn::FiveXx])],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    assert_eq!(h.get("/").await.status, 503);
}

#[tokio::test]
async fn connect_failures_move_to_another_endpoint() {
    let a = backend("a").await;
    let dead = dead_addr().await;
    let r = retrying(3, None, vec![RetryOn::ConnectFailure]);
    let h = start(config(
        vec![r],
        vec![(key("a"), cluster(&[dead, a.addr], RoundRobin))],
    ))
    .await;
    for _ in 0..20 {
        let got = h.get("/").await;
        assert_eq!((got.status, got.body.as_str()), (200, "a"));
    }
    // Without retries the dead endpoint shows: Envoy's connect-failure 503.
    let only_dead = config(
        vec![retrying(0, None, vec![])],
        vec![(key("a"), cluster(&[dead], RoundRobin))],
    );
    h.tx.send(Arc::new(only_dead)).unwrap();
    let got = h.get("/").await;
    assert_eq!(got.status, 503);
    assert!(
        got.body
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{}",
        got.body
    );
}

#[tokio::test]
async fn timeouts_answer_504() {
    // Slow on the first request only: a per-try timeout then a retry rescues it.
    let a = backend_with(
        "a",
        Arc::new(|_, n| {
            (
                200,
                if n == 0 {
                    Duration::from_millis(400)
                } else {
                    Duration::ZERO
                },
            )
        }),
    )
    .await;
    let r = retrying(
        1,
        Some(Duration::from_millis(100)),
        vec![RetryOn::GatewayError],
    );
    let h = start(config(
        vec![r],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    let t = Instant::now();
    let got = h.get("/").await;
    assert_eq!((got.status, got.body.as_str()), (200, "a"));
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "retried after the per-try timeout: {:?}",
        t.elapsed()
    );

    // Always slow: the route timeout (covering all attempts) answers 504.
    let slow = backend_with("slow", Arc::new(|_, _| (200, Duration::from_millis(500)))).await;
    let mut r = retrying(5, Some(Duration::from_millis(100)), vec![RetryOn::FiveXx]);
    r.timeout = Some(Duration::from_millis(250));
    h.tx.send(Arc::new(config(
        vec![r],
        vec![(key("a"), cluster(&[slow.addr], RoundRobin))],
    )))
    .unwrap();
    let t = Instant::now();
    let got = h.get("/").await;
    let took = t.elapsed();
    assert_eq!(
        (got.status, got.body.as_str()),
        (504, "upstream request timeout")
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(550),
        "took {took:?}"
    );

    // Per-try timeout with retries exhausted: 504 too.
    let r = retrying(1, Some(Duration::from_millis(50)), vec![RetryOn::FiveXx]);
    h.tx.send(Arc::new(config(
        vec![r],
        vec![(key("a"), cluster(&[slow.addr], RoundRobin))],
    )))
    .unwrap();
    let got = h.get("/").await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (504, "upstream request timeout")
    );
}

#[tokio::test]
async fn a_cluster_without_endpoints_is_503_no_healthy_upstream() {
    let h = start(config(
        vec![route(vec![], to(&key("a")))],
        vec![(key("a"), cluster(&[], RoundRobin))],
    ))
    .await;
    let got = h.get("/").await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (503, "no healthy upstream")
    );
    assert_eq!(got.header("content-type"), Some("text/plain"));
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_peer_is_replaced() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers the first request on each connection, then closes it on reading the next one
    // (an idle timeout firing just as the proxy reuses the connection).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut served = false;
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 || served {
                        return; // closes without answering
                    }
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                    served = true;
                }
            });
        }
    });
    let h = start(config(
        vec![],
        vec![(key("svc"), cluster(&[addr], RoundRobin))],
    ))
    .await;
    for _ in 0..5 {
        let got = h.get("/").await;
        assert_eq!((got.status, got.body.as_str()), (200, "ok"));
    }
}

#[tokio::test]
async fn the_route_backoff_spaces_the_retries() {
    // Every request fails twice with 503, then gets 200: two waits per request, uniform over
    // 0..=100 ms and 0..=300 ms with a 100 ms base (Envoy's 25 ms default: at most 100 ms
    // together). Eight requests wait about 1.6 s in all with the base, never over 0.8 s
    // without it.
    let a = backend_with(
        "a",
        Arc::new(|_, n| (if n % 3 < 2 { 503 } else { 200 }, Duration::ZERO)),
    )
    .await;
    let mut r = retrying(2, None, vec![RetryOn::FiveXx]);
    if let Some(p) = r.retries.as_mut() {
        p.backoff = Some(Duration::from_millis(100));
    }
    let h = start(config(
        vec![r],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    let t0 = Instant::now();
    for _ in 0..8 {
        let got = h.get("/").await;
        assert_eq!((got.status, got.body.as_str()), (200, "a"));
    }
    let waited = t0.elapsed();
    assert_eq!(a.count(), 24);
    assert!(waited > Duration::from_millis(800), "{waited:?}");
    assert!(waited < Duration::from_millis(3200 + 1000), "{waited:?}");
}
