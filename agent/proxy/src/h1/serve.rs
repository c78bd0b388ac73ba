//! The proxy's own HTTP/1.1 server for a client connection: each request it can take whole
//! (`request`) is read, handled and answered on the connection's task with one buffer each way
//! and no body channel. At the first request it does not take (HTTP/2's preface, an upgrade,
//! a streamed or large body, `Expect`, HTTP/1.0, a malformed head) it hands the socket and the
//! bytes it read to hyper's server for the rest of the connection.

use std::pin::Pin;

use bytes::BytesMut;
use http::{Method, Request, Response};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::conn::READ_CHUNK;
use super::request::{self, Parsed};
use super::respond;
use super::tunnel::Switched;
use crate::body::{ClientBody, ProxyBody};
use crate::handler::{handle, ConnCtx};

/// The largest request body read whole with its head; a larger one streams through hyper.
pub(crate) const MAX_WHOLE_BODY: usize = 64 * 1024;
/// The most read ahead of the request being handled (a pipelining client's next ones).
const MAX_PIPELINED: usize = MAX_WHOLE_BODY + 64 * 1024;

pub(crate) enum Served {
    /// The connection is done (the client closed it, asked to, or the proxy is draining).
    Closed,
    /// hyper's server takes it from here: the socket, with the bytes read and not yet served.
    HandOver(Switched),
}

/// Serves `io` until it ends or needs hyper. `stop` turning true ends it between requests (a
/// drain); so does the connection's close request (`ConnCtx::close`).
pub(crate) async fn serve(
    mut io: TcpStream,
    conn: &ConnCtx,
    stop: &mut watch::Receiver<bool>,
) -> Served {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(1024);
    loop {
        let (parts, body_len, close) = loop {
            match request::parse(&mut buf, MAX_WHOLE_BODY) {
                Parsed::Request {
                    parts,
                    body_len,
                    close,
                } => break (parts, body_len, close),
                Parsed::HandOver => return Served::HandOver(Switched::new(io, buf.freeze())),
                Parsed::Partial => {}
            }
            let read = if buf.is_empty() {
                // Between requests: a drain or a close request ends the connection here.
                tokio::select! {
                    biased;
                    r = fill(&mut io, &mut buf) => r,
                    () = stopped(stop) => return Served::Closed,
                    () = conn.close.notified() => return Served::Closed,
                }
            } else {
                fill(&mut io, &mut buf).await
            };
            if !matches!(read, Ok(n) if n > 0) {
                return Served::Closed; // the client is gone (or half-closed between requests)
            }
        };
        while buf.len() < body_len {
            if !matches!(fill(&mut io, &mut buf).await, Ok(n) if n > 0) {
                return Served::Closed;
            }
        }
        let body = (body_len > 0).then(|| buf.split_to(body_len).freeze());
        let head_request = parts.method == Method::HEAD;
        let req = Request::from_parts(parts, ClientBody::Whole(body));
        let Some(resp) = handle_watching(&mut io, &mut buf, conn, req).await else {
            return Served::Closed; // the client reset the connection: its request is dropped
        };
        match respond::write(&mut io, resp, head_request, close, &mut out).await {
            Ok(true) if !*stop.borrow() => {}
            _ => return Served::Closed,
        }
        if out.capacity() > 64 * 1024 {
            out = Vec::with_capacity(1024); // a large response's buffer is not kept
        }
    }
}

/// Handles `req` while watching the client's socket, as Envoy does: a reset (a read error)
/// abandons the request, whose upstream exchange ends with it. A client's end of writing is no
/// reason to stop (it may half-close once its request is sent); bytes a pipelining client sends
/// meanwhile are kept, up to a bound.
async fn handle_watching(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    conn: &ConnCtx,
    req: Request<ClientBody>,
) -> Option<Response<ProxyBody>> {
    let handling = handle(conn, req);
    tokio::pin!(handling);
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            resp = &mut handling => return Some(resp),
            read = fill(io, buf), if watching => match read {
                Ok(0) => watching = false,
                Ok(_) => watching = buf.len() < MAX_PIPELINED,
                Err(_) => return None,
            },
        }
    }
}

async fn fill(io: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    // Room once per read here, not per poll as `conn::poll_fill` (a response body's reader)
    // makes it: the watch while a request is handled polls this again and again.
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    std::future::poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)).await
}

/// Resolves once `stop` turns true; never when its sender is gone (a detached listener serves
/// on).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
