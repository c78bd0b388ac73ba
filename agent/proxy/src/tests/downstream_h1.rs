//! The client-facing HTTP/1 wire behaviour, with a raw TCP client writing exact bytes and
//! reading raw responses: the proxy's own server (`h1::serve`) for plain requests, hyper's
//! from the first request it hands over (a large or chunked body, HTTP/1.0, `Expect`, a
//! malformed head). Pipelining, bodies across the hand-over, `connection: close`, HEAD. More
//! cases in `downstream_h1_more`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::upstream_h1::{head_backend, ok, raw_backend, Raw};
use super::*;
use meshpath_model::l7::LoadBalancer::RoundRobin;

/// How long any one read or write may take before the test fails as hung.
const WAIT: Duration = Duration::from_secs(10);

/// A raw client connection to the proxy, with what it read and did not consume yet.
pub(super) struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
}

/// One response as read off the wire.
#[derive(Debug)]
pub(super) struct Resp {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body came with chunked framing.
    pub chunked: bool,
}

impl Resp {
    pub fn all(&self, name: &str) -> Vec<&str> {
        let named = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name));
        named.map(|(_, v)| v.as_str()).collect()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Wire {
    pub async fn connect(h: &Harness) -> Wire {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(h.addr)).await;
        let s = s.expect("connected in time").unwrap();
        Wire { s, buf: Vec::new() }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let sent = tokio::time::timeout(WAIT, self.s.write_all(bytes.as_ref())).await;
        sent.expect("written in time").unwrap();
    }

    /// Reads more; `Ok(0)` at EOF. A read that takes longer than [`WAIT`] fails the test.
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(WAIT, self.s.read(&mut chunk)).await;
        let n = read.unwrap_or_else(|_| panic!("read timed out; had {:?}", self.shown()))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let n = self.fill().await.unwrap();
            assert!(n > 0, "EOF inside a response; had {:?}", self.shown());
        }
        self.buf.drain(..n).collect()
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(i + 2).await;
                return String::from_utf8_lossy(&line[..i]).into_owned();
            }
            let n = self.fill().await.unwrap();
            assert!(n > 0, "EOF inside a head; had {:?}", self.shown());
        }
    }

    /// Reads one response: status line, headers, then the body as its framing says (none for
    /// HEAD, 1xx, 204 and 304; chunked; content-length; else up to EOF).
    pub async fn response(&mut self, head_request: bool) -> Resp {
        let status_line = self.line().await;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status = parts.next().and_then(|s| s.parse().ok());
        let status: u16 = status.unwrap_or_else(|| panic!("status line {status_line:?}"));
        let mut resp = Resp {
            version,
            status,
            headers: Vec::new(),
            body: Vec::new(),
            chunked: false,
        };
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').expect("a header line");
            resp.headers.push((k.to_owned(), v.trim().to_owned()));
        }
        if head_request || status < 200 || status == 204 || status == 304 {
            return resp;
        }
        let te = resp
            .header("transfer-encoding")
            .map(str::to_ascii_lowercase);
        if te.is_some_and(|te| te.contains("chunked")) {
            resp.chunked = true;
            loop {
                let size = self.line().await;
                let size = size.split(';').next().unwrap().trim();
                let size = usize::from_str_radix(size, 16).expect("a chunk size");
                if size == 0 {
                    while !self.line().await.is_empty() {} // trailers
                    break;
                }
                let data = self.take(size + 2).await;
                assert_eq!(&data[size..], b"\r\n", "chunk end");
                resp.body.extend_from_slice(&data[..size]);
            }
        } else if let Some(n) = resp.header("content-length") {
            let n = n.parse().expect("a content-length");
            resp.body = self.take(n).await;
        } else {
            while self.fill().await.unwrap_or(0) > 0 {}
            resp.body = std::mem::take(&mut self.buf);
        }
        resp
    }

    /// Whether the proxy ends the connection (EOF or a reset) with nothing more sent.
    pub async fn closed(&mut self) -> bool {
        match self.fill().await {
            Ok(0) | Err(_) => self.buf.is_empty(),
            Ok(_) => panic!("more bytes instead of the end: {:?}", self.shown()),
        }
    }
}

/// A proxy whose only cluster is `addr`; `own_http1` as given.
pub(super) async fn proxy(addr: SocketAddr, own_http1: bool) -> Harness {
    let cfg = config(
        vec![route(vec![], to(&key("a")))],
        vec![(key("a"), cluster(&[addr], RoundRobin))],
    );
    let (tx, rx) = watch::channel(Arc::new(cfg));
    let opts = ProxyOptions {
        own_http1,
        ..ProxyOptions::default()
    };
    let proxy = Proxy::with_options(rx, opts, None);
    let tx = ConfigTx::new(tx, proxy.clone());
    let dst = FixedDst {
        dst: Some(VIP),
        labels: BTreeMap::new(),
    };
    serve_harness(proxy, tx, dst).await
}

/// A raw backend answering every request with its request line as the body.
pub(super) async fn echo_line() -> Raw {
    raw_backend(|r, _| vec![ok(r.line())]).await
}

pub(super) fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: svc.default\r\n\r\n")
}

/// `n` bytes where every offset matters (a lost or moved piece shows).
fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[(i * 7 + i / 1021) % 36])
        .collect()
}

/// Pipelined GETs in one write, answered in order on the one connection.
pub(super) async fn pipelined(own_http1: bool) {
    let b = echo_line().await;
    let h = proxy(b.addr, own_http1).await;
    let mut c = Wire::connect(&h).await;
    for n in [2, 3] {
        let paths: Vec<String> = (0..n).map(|i| format!("/p{n}-{i}")).collect();
        c.send(paths.iter().map(|p| get(p)).collect::<String>())
            .await;
        for p in &paths {
            let r = c.response(false).await;
            assert_eq!((r.status, r.text()), (200, format!("GET {p} HTTP/1.1")));
        }
    }
    assert_eq!(b.accepted(), 1, "one upstream connection, requests in turn");
}

#[tokio::test]
async fn pipelined_gets_in_one_write_are_answered_in_order() {
    pipelined(true).await;
}

#[tokio::test]
async fn pipelined_requests_across_the_hand_over_are_answered_in_order() {
    let b = backend_with("b", Arc::new(|_, _| (200, Duration::ZERO))).await;
    let h = proxy(b.addr, true).await;
    let mut c = Wire::connect(&h).await;
    // Ours, then chunked (handed over), then one hyper serves: all in one write.
    c.send(format!(
        "{}POST /chunked HTTP/1.1\r\nhost: svc.default\r\ntransfer-encoding: chunked\r\n\r\n\
         3\r\nabc\r\n0\r\n\r\n{}",
        get("/one"),
        get("/three")
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(c.response(false).await.text(), "b");
    }
    let seen: Vec<(String, Bytes)> = b
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.uri.clone(), s.body.clone()))
        .collect();
    let want = [("/one", ""), ("/chunked", "abc"), ("/three", "")];
    let want = want.map(|(u, b)| (u.to_owned(), Bytes::from(b)));
    assert_eq!(seen, want);
}

#[tokio::test]
async fn post_body_over_64_kib_reaches_the_backend_whole_and_the_connection_serves_on() {
    let b = backend("b").await;
    let h = proxy(b.addr, true).await;
    let mut c = Wire::connect(&h).await;
    let payload = pattern(200 * 1024);
    let head = format!(
        "POST /big HTTP/1.1\r\nhost: svc.default\r\ncontent-length: {}\r\n\r\n",
        payload.len()
    );
    c.send([head.as_bytes(), &payload].concat()).await;
    let r = c.response(false).await;
    assert_eq!((r.status, r.text()), (200, "b".to_owned()));
    let seen = b.last();
    assert_eq!(seen.uri, "/big");
    assert_eq!(seen.body.len(), payload.len());
    assert!(seen.body == payload, "the body differs");
    // Same connection, now hyper's.
    c.send(get("/after")).await;
    let r = c.response(false).await;
    assert_eq!((r.status, r.text()), (200, "b".to_owned()));
    assert_eq!((b.count(), b.last().uri.as_str()), (2, "/after"));
}

#[tokio::test]
async fn chunked_request_body_reaches_the_backend_whole_and_the_connection_serves_on() {
    let b = backend("b").await;
    let h = proxy(b.addr, true).await;
    let mut c = Wire::connect(&h).await;
    c.send(
        "POST /up HTTP/1.1\r\nhost: svc.default\r\ntransfer-encoding: chunked\r\n\r\n\
         5\r\nhello\r\n6;ext=1\r\n world\r\n",
    )
    .await;
    c.send("1\r\n!\r\n0\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!((r.status, r.text()), (200, "b".to_owned()));
    assert_eq!(b.last().body, "hello world!");
    c.send(get("/next")).await;
    let r = c.response(false).await;
    assert_eq!((r.status, r.text()), (200, "b".to_owned()));
    assert_eq!((b.count(), b.last().uri.as_str()), (2, "/next"));
}

#[tokio::test]
async fn http10_request_gets_an_http10_answer_and_the_connection_closes() {
    let b = echo_line().await;
    let h = proxy(b.addr, true).await;
    let mut c = Wire::connect(&h).await;
    c.send("GET /ten HTTP/1.0\r\nhost: svc.default\r\n\r\n")
        .await;
    let r = c.response(false).await;
    // Today (hyper's server): an HTTP/1.0 status line, the body by content-length, then EOF.
    assert_eq!((r.version.as_str(), r.status), ("HTTP/1.0", 200), "{r:?}");
    assert_eq!(r.text(), "GET /ten HTTP/1.1", "upstream it is HTTP/1.1");
    assert_eq!(r.header("content-length"), Some("17"));
    assert!(c.closed().await, "closed after an HTTP/1.0 answer");
}

#[tokio::test]
async fn http10_keep_alive_request_keeps_the_connection() {
    let b = echo_line().await;
    let h = proxy(b.addr, true).await;
    let mut c = Wire::connect(&h).await;
    let req = "GET /ka HTTP/1.0\r\nhost: svc.default\r\nconnection: keep-alive\r\n\r\n";
    c.send(req).await;
    let r = c.response(false).await;
    assert_eq!((r.version.as_str(), r.status), ("HTTP/1.0", 200), "{r:?}");
    assert_eq!(r.header("connection"), Some("keep-alive"), "{r:?}");
    assert_eq!(r.text(), "GET /ka HTTP/1.1");
    c.send(req).await;
    assert_eq!(c.response(false).await.text(), "GET /ka HTTP/1.1");
}

#[tokio::test]
async fn connection_close_is_answered_with_connection_close_then_eof() {
    let b = echo_line().await;
    let h = proxy(b.addr, true).await;
    let mut c = Wire::connect(&h).await;
    // A second request after it, in the same write, is not answered.
    let close = "GET /bye HTTP/1.1\r\nhost: svc.default\r\nconnection: close\r\n\r\n";
    c.send(format!("{close}{}", get("/never"))).await;
    let r = c.response(false).await;
    assert_eq!((r.status, r.text()), (200, "GET /bye HTTP/1.1".to_owned()));
    assert_eq!(r.all("connection"), ["close"]);
    assert!(c.closed().await);
    assert_eq!(b.seen().len(), 1);
}

/// HEAD: the backend's content-length, no body; a GET after it on the connection.
pub(super) async fn head_then_get(own_http1: bool) {
    let b = head_backend().await;
    let h = proxy(b.addr, own_http1).await;
    let mut c = Wire::connect(&h).await;
    c.send("HEAD /doc HTTP/1.1\r\nhost: svc.default\r\n\r\n")
        .await;
    let r = c.response(true).await;
    assert_eq!((r.status, r.header("content-length")), (200, Some("1000")));
    // A body byte would show up in front of the next response's status line.
    c.send(get("/doc")).await;
    let r = c.response(false).await;
    assert_eq!((r.status, r.text()), (200, "after head".to_owned()));
    assert_eq!(b.seen()[0].line(), "HEAD /doc HTTP/1.1");
}

#[tokio::test]
async fn head_has_the_backends_content_length_and_no_body_and_the_connection_serves_on() {
    head_then_get(true).await;
}
