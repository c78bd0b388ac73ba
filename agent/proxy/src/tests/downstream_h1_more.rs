//! More of the client-facing HTTP/1 wire behaviour (see `downstream_h1`): upstream bodies of
//! unknown length, malformed and split requests, `date`, `Expect`, the proxy's own answers,
//! and the same behaviour with `own_http1: false`.

use super::downstream_h1::{echo_line, get, head_then_get, pipelined, proxy, Wire};
use super::upstream_h1::{ok, raw_backend, w, Step};
use super::*;
use crate::layers::testing::eventually;
use meshpath_model::l7::Abort;
use meshpath_model::l7::LoadBalancer::RoundRobin;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn chunked_upstream_response_arrives_whole_and_the_connection_serves_on() {
    let b = raw_backend(|_, n| match n {
        0 => vec![
            w("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"),
            Step::Pause(Duration::from_millis(20)),
            w("6\r\n world\r\n0\r\n\r\n"),
        ],
        _ => vec![ok("next")],
    })
    .await;
    let h = proxy(b.addr, true).await;
    let mut c = Wire::connect(&h).await;
    c.send(get("/chunked")).await;
    let r = c.response(false).await;
    assert_eq!((r.status, r.text()), (200, "hello world".to_owned()));
    assert!(r.chunked, "{r:?}");
    c.send(get("/next")).await;
    assert_eq!(c.response(false).await.text(), "next");
    assert_eq!(b.accepted(), 1);
}

#[tokio::test]
async fn close_delimited_upstream_response_arrives_whole_chunked_and_the_connection_serves_on() {
    let body: String = (0..20_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let sent = body.clone();
    let b = raw_backend(move |_, n| match n {
        0 => vec![
            w("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n"),
            w(&sent[..7_000]),
            Step::Pause(Duration::from_millis(20)),
            w(&sent[7_000..]),
            Step::Close,
        ],
        _ => vec![ok("next")],
    })
    .await;
    let h = proxy(b.addr, true).await;
    let mut c = Wire::connect(&h).await;
    c.send(get("/old")).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text() == body,
        "the body differs ({} bytes)",
        r.body.len()
    );
    // Today: re-framed chunked for the HTTP/1.1 client, so the connection stays usable.
    assert!(r.chunked, "{r:?}");
    assert_eq!(r.header("content-length"), None);
    c.send(get("/next")).await;
    assert_eq!(c.response(false).await.text(), "next");
}

#[tokio::test]
async fn http10_client_gets_a_chunked_upstream_body_close_delimited() {
    let b = raw_backend(|_, _| {
        vec![w(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )]
    })
    .await;
    let h = proxy(b.addr, true).await;
    let mut c = Wire::connect(&h).await;
    c.send("GET / HTTP/1.0\r\nhost: svc.default\r\n\r\n").await;
    // An HTTP/1.0 client knows no chunked framing: the body runs to the connection's end.
    let r = c.response(false).await;
    assert_eq!((r.version.as_str(), r.status), ("HTTP/1.0", 200), "{r:?}");
    assert_eq!(
        (r.chunked, r.header("content-length")),
        (false, None),
        "{r:?}"
    );
    assert_eq!(r.text(), "hello");
    assert!(c.closed().await);
}

#[tokio::test]
async fn malformed_request_line_gets_400_from_hyper_then_eof() {
    let b = echo_line().await;
    let h = proxy(b.addr, true).await;
    let mut c = Wire::connect(&h).await;
    c.send("GARBAGE\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!((r.version.as_str(), r.status), ("HTTP/1.1", 400), "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    assert!(c.closed().await);
    assert!(b.seen().is_empty());
}

#[tokio::test]
async fn request_written_byte_by_byte_is_served() {
    let b = backend("b").await;
    let h = proxy(b.addr, true).await;
    let mut c = Wire::connect(&h).await;
    let req = "POST /slow?q=1 HTTP/1.1\r\nhost: svc.default\r\nx-one: 1\r\n\
               content-length: 10\r\n\r\n0123456789";
    for byte in req.as_bytes() {
        c.send([*byte]).await;
        tokio::time::sleep(Duration::from_millis(1)).await; // the client's pacing
    }
    let r = c.response(false).await;
    assert_eq!((r.status, r.text()), (200, "b".to_owned()));
    let seen = b.last();
    assert_eq!(
        (seen.uri.as_str(), seen.header("x-one")),
        ("/slow?q=1", Some("1"))
    );
    assert_eq!(seen.body, "0123456789");
    c.send(get("/again")).await;
    assert_eq!(c.response(false).await.text(), "b");
}

#[tokio::test]
async fn response_has_exactly_one_date_header() {
    // The hyper backend sends its own `date`; the raw one none, so the proxy adds one.
    let (with, without) = (backend("b").await, echo_line().await);
    for (addr, what) in [(with.addr, "the backend's"), (without.addr, "the proxy's")] {
        for own in [true, false] {
            let h = proxy(addr, own).await;
            let mut c = Wire::connect(&h).await;
            c.send(get("/")).await;
            let r = c.response(false).await;
            assert_eq!(r.status, 200);
            let dates = r.all("date");
            assert_eq!(dates.len(), 1, "{what}, own_http1 {own}: {r:?}");
            assert!(httpdate::parse_http_date(dates[0]).is_ok(), "{r:?}");
        }
    }
}

#[tokio::test]
async fn expect_100_continue_gets_100_then_the_final_answer() {
    let b = backend("b").await;
    let h = proxy(b.addr, true).await;
    let mut c = Wire::connect(&h).await;
    c.send(
        "POST /e HTTP/1.1\r\nhost: svc.default\r\ncontent-length: 5\r\n\
         expect: 100-continue\r\n\r\n",
    )
    .await;
    // The body only after the interim answer: a proxy that never sends one hangs here.
    let r = c.response(false).await;
    assert_eq!((r.version.as_str(), r.status), ("HTTP/1.1", 100), "{r:?}");
    c.send("hello").await;
    let r = c.response(false).await;
    assert_eq!((r.status, r.text()), (200, "b".to_owned()));
    assert_eq!(b.last().body, "hello");
    // The `100` came from the proxy: upstream the header would ask for another (Envoy, too,
    // removes it).
    assert_eq!(b.last().header("expect"), None);
    c.send(get("/after")).await;
    assert_eq!(c.response(false).await.text(), "b");
}

#[tokio::test]
async fn without_own_http1_pipelined_gets_are_answered_in_order() {
    pipelined(false).await;
}

#[tokio::test]
async fn without_own_http1_head_has_content_length_and_no_body() {
    head_then_get(false).await;
}

#[tokio::test]
async fn proxys_own_404_and_fault_abort_are_framed_on_the_wire() {
    let a = backend("a").await;
    let only = |p: &str| {
        vec![HttpMatch {
            uri: Some(prefix(p)),
            ..HttpMatch::default()
        }]
    };
    let mut abort = route(only("/abort"), to(&key("a")));
    abort.fault = Some(Fault {
        delay: None,
        abort: Some((Abort::Http(503), 100.0)),
    });
    let h = start(config(
        vec![abort, route(only("/ok"), to(&key("a")))],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    let mut c = Wire::connect(&h).await;
    // All in one write: each answer's framing must end exactly where the next one starts.
    let head = "HEAD /none HTTP/1.1\r\nhost: svc.default\r\n\r\n";
    c.send([get("/none"), get("/abort"), head.into(), get("/ok")].concat())
        .await;
    let r = c.response(false).await;
    assert_eq!(
        (r.status, r.header("content-length")),
        (404, Some("0")),
        "{r:?}"
    );
    assert!(r.body.is_empty());
    assert_eq!(r.all("date").len(), 1);
    let r = c.response(false).await;
    assert_eq!((r.status, r.text()), (503, "fault filter abort".to_owned()));
    assert_eq!(r.header("content-length"), Some("18"), "{r:?}");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let r = c.response(true).await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = c.response(false).await;
    assert_eq!((r.status, r.text()), (200, "a".to_owned()));
    assert_eq!(a.count(), 1, "only /ok reached the backend");
}

/// A client that resets its connection while its request waits on a backend that never
/// answers: the proxy's own server abandons the request and closes its upstream connection, as
/// Envoy does. (hyper's server does not notice the reset while its handler runs.)
#[tokio::test]
async fn a_client_reset_abandons_its_request_upstream() {
    use std::sync::atomic::AtomicBool;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got, given_up) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (g, u) = (got.clone(), given_up.clone());
    let backend = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        g.store(true, Ordering::SeqCst);
        // No answer; the read ends when the proxy closes the connection.
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await
        {
            u.store(true, Ordering::SeqCst);
        }
    });
    let h = proxy(addr, true).await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET /never HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await
        .unwrap();
    assert!(
        eventually(|| got.load(Ordering::SeqCst)).await,
        "the request reached the backend"
    );
    // SO_LINGER 0: closing sends a reset (and blocks nothing: there is no linger time).
    #[allow(deprecated)]
    s.set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
    let abandoned = eventually(|| given_up.load(Ordering::SeqCst)).await;
    backend.abort();
    assert!(
        abandoned,
        "the upstream connection still open 2 s after the client's reset"
    );
}
