use bytes::BytesMut;
use http::{Method, Request, StatusCode, Version};

use super::*;

fn encoded(req: Request<()>, body_len: Option<u64>) -> (String, Framing) {
    let (parts, ()) = req.into_parts();
    let mut out = Vec::new();
    let framing = encode_head(&parts, body_len, &mut out);
    (String::from_utf8(out).unwrap(), framing)
}

#[test]
fn request_heads_say_how_their_body_is_framed() {
    let get = Request::get("/a?b=1")
        .header("host", "svc")
        .body(())
        .unwrap();
    assert_eq!(
        encoded(get, Some(0)),
        (
            "GET /a?b=1 HTTP/1.1\r\nhost: svc\r\n\r\n".into(),
            Framing::Empty
        )
    );
    let post = Request::post("/").header("host", "svc").body(()).unwrap();
    let (head, framing) = encoded(post, Some(1234));
    assert_eq!(
        head,
        "POST / HTTP/1.1\r\nhost: svc\r\ncontent-length: 1234\r\n\r\n"
    );
    assert_eq!(framing, Framing::Length(1234));
    // A chunked client request buffered whole goes out with its length, without its coding.
    let chunked = Request::put("/x")
        .header("transfer-encoding", "chunked")
        .body(())
        .unwrap();
    let (head, framing) = encoded(chunked, Some(5));
    assert_eq!(head, "PUT /x HTTP/1.1\r\ncontent-length: 5\r\n\r\n");
    assert_eq!(framing, Framing::Length(5));
    let unknown = Request::post("/up").body(()).unwrap();
    let (head, framing) = encoded(unknown, None);
    assert_eq!(
        head,
        "POST /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert_eq!(framing, Framing::Chunked);
    let given = Request::post("/")
        .header("content-length", "7")
        .version(Version::HTTP_10)
        .body(())
        .unwrap();
    assert_eq!(
        encoded(given, None),
        (
            "POST / HTTP/1.0\r\ncontent-length: 7\r\n\r\n".into(),
            Framing::Length(7)
        )
    );
}

fn parse(wire: &str, method: &Method) -> (Result<Option<Head>, WireError>, BytesMut) {
    let mut buf = BytesMut::from(wire.as_bytes());
    let head = parse_head(&mut buf, method);
    (head, buf)
}

#[test]
fn response_heads_parse_into_http_types_and_leave_the_body() {
    let wire = "HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\nX-Bin: caf\u{e9}\r\n\r\nhello";
    let (head, rest) = parse(wire, &Method::GET);
    let head = head.unwrap().unwrap();
    assert_eq!(head.response.status(), StatusCode::CREATED);
    assert_eq!(head.response.version(), Version::HTTP_11);
    let h = head.response.headers();
    let a: Vec<_> = h
        .get_all("x-a")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(a, ["1", "2"]);
    assert_eq!(h["x-bin"].as_bytes(), "caf\u{e9}".as_bytes());
    assert_eq!(head.framing, Framing::Length(5));
    assert!(head.keep_alive);
    assert_eq!(&rest[..], b"hello");
}

#[test]
fn an_incomplete_head_waits_and_a_broken_one_fails() {
    let partial = "HTTP/1.1 200 OK\r\nContent-Le";
    let (head, rest) = parse(partial, &Method::GET);
    assert!(head.unwrap().is_none());
    assert_eq!(&rest[..], partial.as_bytes(), "nothing consumed");
    assert!(parse("HTTP/1.1 2x0 OK\r\n\r\n", &Method::GET).0.is_err());
    assert!(parse("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", &Method::GET)
        .0
        .is_err());
    let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
    assert!(matches!(
        parse(&huge, &Method::GET).0,
        Err(WireError::HeadTooLarge)
    ));
}

fn framing(wire: &str, method: &Method) -> Result<(Framing, bool), WireError> {
    parse(wire, method).0.map(|h| {
        let h = h.unwrap();
        (h.framing, h.keep_alive)
    })
}

#[test]
fn framing_follows_rfc_9112() {
    use Framing::*;
    let get = &Method::GET;
    assert_eq!(
        framing(
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            &Method::HEAD
        )
        .unwrap(),
        (Empty, true)
    );
    assert_eq!(
        framing("HTTP/1.1 204 No Content\r\n\r\n", get).unwrap(),
        (Empty, true)
    );
    assert_eq!(
        framing(
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
            get
        )
        .unwrap(),
        (Empty, true)
    );
    assert_eq!(
        framing("HTTP/1.1 100 Continue\r\n\r\n", get).unwrap(),
        (Empty, true)
    );
    assert_eq!(
        framing(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n",
            get
        )
        .unwrap(),
        (Chunked, true)
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", get).unwrap(),
        (Close, false)
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\n\r\n", get).unwrap(),
        (Close, false)
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", get).unwrap(),
        (Empty, true)
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ncontent-length: 4, 4\r\n\r\n", get).unwrap(),
        (Length(4), true)
    );
    assert!(framing(
        "HTTP/1.1 200 OK\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n",
        get
    )
    .is_err());
    assert!(framing("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", get).is_err());
    assert_eq!(
        framing(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: Close\r\n\r\n",
            get
        )
        .unwrap(),
        (Length(2), false)
    );
    assert_eq!(
        framing("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n", get).unwrap(),
        (Length(2), false)
    );
    assert_eq!(
        framing(
            "HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n",
            get
        )
        .unwrap(),
        (Length(2), true)
    );
}

#[test]
fn chunk_sizes_are_lowercase_hex() {
    for (n, hex) in [
        (1usize, "1"),
        (15, "f"),
        (16, "10"),
        (4096, "1000"),
        (0xabcde, "abcde"),
    ] {
        let mut out = Vec::new();
        chunk_head(n, &mut out);
        assert_eq!(out, format!("{hex}\r\n").into_bytes());
    }
}
