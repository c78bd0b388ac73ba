//! An upstream connection after `101 Switching Protocols`: the bytes read past the head come
//! first, then the socket's, for the tunnel that splices it to the client.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Conn;

/// The switched connection, carried to the tunnel as a response extension (which must be
/// `Clone`: the one taker gets it).
#[derive(Clone)]
pub(crate) struct Upgraded(Arc<Mutex<Option<Conn>>>);

impl Upgraded {
    pub(crate) fn new(conn: Conn) -> Upgraded {
        Upgraded(Arc::new(Mutex::new(Some(conn))))
    }

    pub(crate) fn take(&self) -> Option<Switched> {
        let conn = self.0.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        let (io, rest) = conn.into_upgraded();
        Some(Switched::new(io, rest))
    }
}

/// A socket whose first bytes were already read: those come first. The tunnel's upstream
/// side, and a client connection handed to hyper's server (`serve`).
pub(crate) struct Switched {
    io: TcpStream,
    rest: Bytes,
}

impl Switched {
    pub(crate) fn new(io: TcpStream, rest: Bytes) -> Switched {
        Switched { io, rest }
    }
}

impl AsyncRead for Switched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.rest.is_empty() {
            let n = this.rest.len().min(buf.remaining());
            buf.put_slice(&this.rest[..n]);
            this.rest.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Switched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
