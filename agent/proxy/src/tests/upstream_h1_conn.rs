//! The upstream HTTP/1 client's connection handling, against the scripted raw backend of
//! `upstream_h1`: keep-alive reuse, `connection: close`, idle connections the backend closes,
//! a request that meets a connection closed on it, a backend that never answers, and one whose
//! response body breaks off.

use super::upstream_h1::{call, get, ok, proxy_to, raw_backend, w, Step};
use super::*;
use crate::layers::testing::eventually;

#[tokio::test]
async fn connection_close_response_is_not_reused_and_the_proxy_closes_it() {
    // The backend leaves closing to the proxy: it keeps reading after the answer.
    let b = raw_backend(|_, n| match n {
        0 => vec![w(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nfirst",
        )],
        _ => vec![ok("second")],
    })
    .await;
    let h = proxy_to(&b).await;
    let got = get(&h, "/").await;
    assert_eq!((got.status, got.body.as_str()), (200, "first"));
    // Hop-by-hop: the upstream's `connection: close` is not passed to the client.
    assert_eq!(got.header("connection"), None);
    assert!(eventually(|| b.closed() == 1).await, "the proxy closed it");
    let got = get(&h, "/").await;
    assert_eq!((got.status, got.body.as_str()), (200, "second"));
    assert_eq!(b.accepted(), 2);
    assert_eq!(b.seen()[1].conn, 1);
}

#[tokio::test]
async fn keep_alive_connection_carries_sequential_requests() {
    let b = raw_backend(|r, _| vec![ok(&format!("reply to {}", r.line()))]).await;
    let h = proxy_to(&b).await;
    for i in 0..5 {
        let got = get(&h, &format!("/r/{i}?q={i}")).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body, format!("reply to GET /r/{i}?q={i} HTTP/1.1"));
    }
    assert_eq!(b.accepted(), 1);
    let seen = b.seen();
    assert_eq!(seen.len(), 5);
    for r in &seen {
        assert_eq!(r.conn, 0);
        assert_eq!(r.headers("host"), ["svc.default"]);
        assert_eq!(r.header("transfer-encoding"), None);
        assert!(r.body.is_empty());
    }
}

#[tokio::test]
async fn idle_connection_closed_by_the_backend_is_replaced() {
    let b = raw_backend(|_, n| match n {
        0 => vec![
            ok("first"),
            Step::Pause(Duration::from_millis(50)),
            Step::Close,
        ],
        _ => vec![ok("second")],
    })
    .await;
    let h = proxy_to(&b).await;
    assert_eq!(get(&h, "/").await.body, "first");
    assert!(eventually(|| b.closed() == 1).await);
    let got = get(&h, "/").await;
    assert_eq!((got.status, got.body.as_str()), (200, "second"));
    assert_eq!(b.accepted(), 2);
}

#[tokio::test]
async fn idempotent_request_meeting_a_connection_closed_on_it_is_resent_on_a_new_one() {
    // The backend reads the second request on the reused connection and closes without an
    // answer: a stale pooled connection. A GET is sent again at once on a fresh connection; a
    // POST is not (it may have been acted on) and gets Envoy's reset answer.
    let b = raw_backend(|_, n| match n {
        1 | 3 => vec![Step::Close],
        _ => vec![ok(&format!("answer {n}"))],
    })
    .await;
    let h = proxy_to(&b).await;
    assert_eq!(get(&h, "/").await.body, "answer 0");
    let got = get(&h, "/").await;
    assert_eq!((got.status, got.body.as_str()), (200, "answer 2"));
    let seen = b.seen();
    assert_eq!((seen[1].conn, seen[2].conn), (0, 1));
    assert_eq!(seen[2].header("x-envoy-attempt-count"), Some("1"));

    let post = Request::post("/")
        .body(Bytes::from_static(b"once"))
        .unwrap();
    let got = call(&h, post).await;
    assert_eq!(got.status, 503);
    assert_eq!(b.seen().len(), 4, "the POST went out once");
    assert_eq!(get(&h, "/").await.body, "answer 4");
}

#[tokio::test]
async fn backend_closing_without_a_response_gives_503() {
    let b = raw_backend(|_, n| match n {
        0 => vec![Step::Close],
        _ => vec![ok("fine")],
    })
    .await;
    let h = proxy_to(&b).await;
    let got = get(&h, "/").await;
    assert_eq!(got.status, 503);
    assert!(
        got.body
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{got:?}"
    );
    // A reset on a fresh connection is not among Istio's default retry conditions.
    assert_eq!(b.seen().len(), 1);
    let got = get(&h, "/").await;
    assert_eq!((got.status, got.body.as_str()), (200, "fine"));
}

#[tokio::test]
async fn response_body_broken_off_upstream_fails_the_client_response() {
    // Fewer bytes than the content-length, then a close; a bad chunk-size line: the client's
    // response must end in an error, never as a shorter body that looks whole.
    let b = raw_backend(|_, n| match n {
        0 => vec![
            w("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"),
            Step::Close,
        ],
        1 => vec![w(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        )],
        _ => vec![ok("fine")],
    })
    .await;
    let h = proxy_to(&b).await;
    for path in ["/cut", "/bad-chunk"] {
        let req = Request::get(format!("http://{}{path}", h.addr))
            .header("host", "svc.default")
            .body(Full::new(Bytes::new()))
            .unwrap();
        // The proxy may learn of the break before its head went out (both in one read): the
        // client then sees the connection end before the head; either way it sees an error.
        let exchange = async {
            let resp = h.client.request(req).await.map_err(|e| e.to_string())?;
            assert_eq!(resp.status(), 200);
            resp.into_body()
                .collect()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let result = tokio::time::timeout(Duration::from_secs(10), exchange).await;
        assert!(result.expect("no hang").is_err(), "{path}");
    }
    let got = get(&h, "/").await;
    assert_eq!((got.status, got.body.as_str()), (200, "fine"));
    assert_eq!(b.accepted(), 3);
}
