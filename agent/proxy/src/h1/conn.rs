//! One upstream HTTP/1.1 connection and one exchange on it: the request written from the
//! calling task, the response head read there too. No connection task, no channel between the
//! request and the socket: whoever holds the [`Conn`] (a request, then its response body, then
//! the idle pool) drives it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::{SendError, WireError};
use super::wire::{self, Framing, Head, INLINE_BODY, LAST_CHUNK};
use crate::body::UpBody;
use crate::breaker::CxGuard;

/// Read buffer growth: enough for a typical response head and a small body in one read.
pub(super) const READ_CHUNK: usize = 8 * 1024;
/// The most a body read asks for at once.
const MAX_READ: usize = 64 * 1024;

/// An upstream HTTP/1.1 connection: the socket, the bytes read from it and not yet consumed,
/// and its request count (`maxRequestsPerConnection`).
pub(crate) struct Conn {
    io: TcpStream,
    pub(super) buf: BytesMut,
    /// Request heads are written from here (kept to reuse its allocation).
    wbuf: Vec<u8>,
    /// Requests this connection has carried, the one in flight included.
    pub(crate) uses: u32,
    /// The proxy worker whose runtime the socket is registered with (its idle stack).
    pub(crate) home: usize,
    /// The connection counts as open in its cluster's stats while this lives.
    _cx: Option<CxGuard>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.io.peer_addr().ok())
            .field("uses", &self.uses)
            .finish()
    }
}

impl Conn {
    pub(crate) fn new(io: TcpStream, home: usize, cx: Option<CxGuard>) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            wbuf: Vec::new(),
            uses: 0,
            home,
            _cx: cx,
        }
    }

    /// Whether an idle connection can carry a request: nothing arrived on it since its last
    /// response (neither the peer's close nor stray bytes). Costs no system call unless the
    /// socket was left marked readable.
    pub(crate) fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // The mark may be left from the last read (a full buffer does not clear it): ask.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads what the socket has into the buffer, asking for up to `want` bytes; 0 is the end.
    pub(super) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<io::Result<usize>> {
        poll_fill(Pin::new(&mut self.io), &mut self.buf, cx, want)
    }

    /// The socket and the bytes already read past the `101` head, for a tunnel.
    pub(crate) fn into_upgraded(self) -> (TcpStream, Bytes) {
        (self.io, self.buf.freeze())
    }
}

/// Reads what `io` has into `buf` (through tokio's `poll_read`, which marks a drained socket
/// without a further `EAGAIN` read), growing `buf` by about `want`; 0 is the end.
pub(super) fn poll_fill<R: AsyncRead>(
    io: Pin<&mut R>,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    want: usize,
) -> Poll<io::Result<usize>> {
    let want = want.clamp(READ_CHUNK, MAX_READ);
    if buf.capacity() - buf.len() < want / 2 {
        buf.reserve(want);
    }
    tokio_util::io::poll_read_buf(io, cx, buf)
}

/// The response head of an exchange, and the connection now positioned at its body.
pub(crate) struct Answer {
    pub head: Head,
    pub conn: Conn,
    /// The whole request went out (a server may answer before reading all of a streamed body;
    /// the connection then cannot be reused).
    pub request_sent: bool,
}

/// A failed exchange. The connection is closed; the request's body comes back when none of
/// the request could have been acted on (its head was never fully written).
pub(crate) struct Failed {
    pub error: SendError,
    pub unsent: Option<UpBody>,
}

/// Sends the request (`parts`, `body`) on `conn` and reads the response head (skipping `1xx`
/// interim answers).
pub(crate) async fn send(mut conn: Conn, parts: &Parts, body: UpBody) -> Result<Answer, Failed> {
    let upgrade = crate::upgrade::is_upgrade(parts);
    let body_len = match &body {
        UpBody::Full(b) => Some(b.as_ref().map_or(0, |b| b.len() as u64)),
        UpBody::Stream(inc) => http_body::Body::size_hint(inc).exact(),
    };
    conn.uses += 1;
    conn.wbuf.clear();
    let framing = wire::encode_head(parts, body_len, &mut conn.wbuf);
    match body {
        UpBody::Full(data) => {
            let data = data.filter(|_| framing != Framing::Empty);
            let inline = data.as_ref().filter(|d| d.len() <= INLINE_BODY);
            if let Some(d) = inline {
                conn.wbuf.extend_from_slice(d);
            }
            let mut wrote = conn.io.write_all(&conn.wbuf).await;
            if let (Ok(()), Some(d), None) = (&wrote, &data, inline) {
                wrote = conn.io.write_all(d).await;
            }
            if let Err(e) = wrote {
                return Err(Failed {
                    error: SendError::Write(e),
                    unsent: Some(UpBody::Full(data)),
                });
            }
            let head = read_head(&mut conn.io, &mut conn.buf, &parts.method, upgrade).await;
            finish(head, conn, true)
        }
        UpBody::Stream(mut inc) => {
            if let Err(e) = conn.io.write_all(&conn.wbuf).await {
                return Err(Failed {
                    error: SendError::Write(e),
                    unsent: Some(UpBody::Stream(inc)),
                });
            }
            let (head, sent) = {
                let Conn { io, buf, wbuf, .. } = &mut conn;
                let (mut rd, mut wr) = io.split();
                let chunked = framing == Framing::Chunked;
                let pump = pump(&mut wr, &mut inc, chunked, wbuf);
                let read = read_head(&mut rd, buf, &parts.method, upgrade);
                tokio::pin!(pump, read);
                // The response may come before the body is all sent (an early error answer).
                let mut pumped = None;
                loop {
                    tokio::select! {
                        biased;
                        head = &mut read => break (head, pumped == Some(true)),
                        p = &mut pump, if pumped.is_none() => match p {
                            Ok(()) => pumped = Some(true),
                            Err(Pump::Client(e)) => return Err(Failed {
                                error: SendError::ClientBody(e),
                                unsent: None,
                            }),
                            // The server stopped reading: its answer may still come.
                            Err(Pump::Write(error)) => {
                                tracing::debug!(%error, "upstream stopped reading the request body");
                                pumped = Some(false);
                            }
                        },
                    }
                }
            };
            finish(head, conn, sent)
        }
    }
}

fn finish(head: Result<Head, SendError>, conn: Conn, request_sent: bool) -> Result<Answer, Failed> {
    match head {
        Ok(head) => Ok(Answer {
            head,
            conn,
            request_sent,
        }),
        Err(error) => Err(Failed {
            error,
            unsent: None,
        }),
    }
}

async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    method: &Method,
    upgrade: bool,
) -> Result<Head, SendError> {
    let mut received = !buf.is_empty();
    loop {
        if buf.is_empty() {
            // Nothing to parse yet (the usual case right after the request went out).
        } else if let Some(head) = wire::parse_head(buf, method)? {
            let status = head.response.status();
            if status == StatusCode::SWITCHING_PROTOCOLS && !upgrade {
                return Err(WireError::UnaskedUpgrade.into());
            }
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                continue; // `100 Continue`, `103 Early Hints`: the final answer follows
            }
            return Ok(head);
        }
        let n = std::future::poll_fn(|cx| poll_fill(Pin::new(&mut *io), buf, cx, READ_CHUNK))
            .await
            .map_err(SendError::Read)?;
        if n == 0 {
            return Err(if received {
                SendError::ClosedInHead
            } else {
                SendError::Closed
            });
        }
        received = true;
    }
}

enum Pump {
    Client(hyper::Error),
    Write(io::Error),
}

/// Streams the client's body upstream, as is or in chunks.
async fn pump<W: AsyncWrite + Unpin>(
    wr: &mut W,
    body: &mut Incoming,
    chunked: bool,
    scratch: &mut Vec<u8>,
) -> Result<(), Pump> {
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Pump::Client)?.into_data() else {
            continue; // trailers: not forwarded on HTTP/1
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            scratch.clear();
            wire::chunk_head(data.len(), scratch);
            scratch.extend_from_slice(&data);
            scratch.extend_from_slice(b"\r\n");
            wr.write_all(scratch).await.map_err(Pump::Write)?;
        } else {
            wr.write_all(&data).await.map_err(Pump::Write)?;
        }
    }
    if chunked {
        wr.write_all(LAST_CHUNK).await.map_err(Pump::Write)?;
    }
    Ok(())
}
