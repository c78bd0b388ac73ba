use bytes::BytesMut;
use http::Method;

use super::*;

fn parsed(wire: &str) -> (Parsed, BytesMut) {
    let mut buf = BytesMut::from(wire.as_bytes());
    let p = parse(&mut buf, 1024);
    (p, buf)
}

#[test]
fn a_plain_request_is_parsed_and_its_head_taken_off() {
    let wire = "POST /a/b?c=1 HTTP/1.1\r\nHost: svc\r\nX-A: 1\r\nContent-Length: 4\r\nx-a: 2\r\nX-Bin: caf\u{e9}\r\n\r\nbodyGET";
    let (p, rest) = parsed(wire);
    let Parsed::Request {
        parts,
        body_len,
        close,
    } = p
    else {
        panic!("{p:?}");
    };
    assert_eq!(parts.method, Method::POST);
    assert_eq!(parts.uri, "/a/b?c=1");
    assert_eq!(parts.uri.query(), Some("c=1"));
    assert_eq!((body_len, close), (4, false));
    let a: Vec<_> = parts.headers.get_all("x-a").iter().collect();
    assert_eq!(a, ["1", "2"], "repeated values in order");
    assert_eq!(parts.headers["host"], "svc");
    assert_eq!(parts.headers["x-bin"].as_bytes(), "caf\u{e9}".as_bytes());
    assert_eq!(&rest[..], b"bodyGET", "the body and what follows stay");
}

#[test]
fn connection_close_is_noted() {
    let (p, _) = parsed("GET / HTTP/1.1\r\nconnection: keep-alive, Close\r\n\r\n");
    assert!(matches!(p, Parsed::Request { close: true, .. }), "{p:?}");
}

#[test]
fn an_incomplete_head_waits() {
    let (p, rest) = parsed("GET / HTTP/1.1\r\nhost: a\r\n");
    assert!(matches!(p, Parsed::Partial));
    assert_eq!(rest.len(), 25);
}

#[test]
fn what_hyper_serves_is_handed_over_untouched() {
    for wire in [
        "GET / HTTP/1.0\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
        "GET /ws HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
        "GET / HTTP/1.1\r\nupgrade: h2c\r\n\r\n",
        "POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n",
        "POST / HTTP/1.1\r\ncontent-length: 2048\r\n\r\n",
        "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n",
        "POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n",
        "GET http://svc/ HTTP/1.1\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\n\r\n",
        "CONNECT svc:443 HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nbad header\r\n\r\n",
        "G\u{1}T / HTTP/1.1\r\n\r\n",
    ] {
        let (p, rest) = parsed(wire);
        assert!(matches!(p, Parsed::HandOver), "{wire:?}: {p:?}");
        assert_eq!(&rest[..], wire.as_bytes(), "{wire:?}: bytes untouched");
    }
    let huge = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
    assert!(matches!(parsed(&huge).0, Parsed::HandOver));
}
