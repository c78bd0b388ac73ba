//! An upstream HTTP/1 response body, read from its connection as the client's side polls for
//! it. The connection goes back to its pool the moment the body's last byte is read (or at
//! once when the body was read with the head); a body dropped before its end closes it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::chunked::{Chunked, Step};
use super::conn::Conn;
use super::error::BodyError;
use super::wire::Framing;
use crate::upstream::GiveBack;

pub(crate) struct Body {
    kind: Kind,
    /// Held while the body is read from it.
    conn: Option<Conn>,
    /// Where the connection goes once the body ends, `None` when it cannot carry another
    /// request.
    back: Option<GiveBack>,
}

enum Kind {
    /// Every byte in hand (or none left to hand out).
    Whole(Option<Bytes>),
    Length(u64),
    Chunked(Chunked),
    /// Until the server closes.
    Close,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h1::Body").finish_non_exhaustive()
    }
}

impl Body {
    /// The body framed by `framing` that follows the head read on `conn`; `back` gets the
    /// connection when it may be `reusable`.
    pub(crate) fn new(framing: Framing, reusable: bool, mut conn: Conn, back: GiveBack) -> Body {
        let kind = match framing {
            Framing::Empty => Kind::Whole(None),
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                Kind::Whole(Some(conn.buf.split_to(n as usize).freeze()))
            }
            Framing::Length(n) => Kind::Length(n),
            Framing::Chunked => Kind::Chunked(Chunked::default()),
            Framing::Close => Kind::Close,
        };
        let mut body = Body {
            kind,
            conn: Some(conn),
            back: reusable.then_some(back),
        };
        if matches!(body.kind, Kind::Whole(_)) {
            body.release();
        }
        body
    }

    /// No body and no connection.
    pub(crate) fn empty() -> Body {
        Body {
            kind: Kind::Whole(None),
            conn: None,
            back: None,
        }
    }

    /// Gives the connection back if it may carry another request and holds nothing more.
    fn release(&mut self) {
        if let (Some(conn), Some(back)) = (self.conn.take(), self.back.take()) {
            if conn.buf.is_empty() {
                back.give_back(conn);
            }
        }
    }

    /// Stops reading: the connection closes (a half-read response cannot be reused).
    pub(crate) fn abandon(&mut self) {
        self.kind = Kind::Whole(None);
        self.conn = None;
        self.back = None;
    }

    fn done(&mut self) {
        self.kind = Kind::Whole(None);
        self.release();
    }

    fn failed(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.abandon();
        Poll::Ready(Some(Err(e)))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let want = match &mut this.kind {
                Kind::Whole(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
                Kind::Length(left) => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    if !conn.buf.is_empty() {
                        let n = (*left).min(conn.buf.len() as u64);
                        let data = conn.buf.split_to(n as usize).freeze();
                        *left -= n;
                        if *left == 0 {
                            this.done();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    usize::try_from(*left).unwrap_or(usize::MAX)
                }
                Kind::Chunked(dec) => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    match dec.step(&mut conn.buf) {
                        Ok(Step::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                        Ok(Step::End(trailers)) => {
                            this.done();
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                        Ok(Step::More) => 0,
                        Err(e) => return this.failed(e.into()),
                    }
                }
                Kind::Close => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    0
                }
            };
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match std::task::ready!(conn.poll_fill(cx, want)) {
                Ok(0) if matches!(this.kind, Kind::Close) => {
                    this.abandon();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.failed(BodyError::Closed),
                Ok(_) => {}
                Err(e) => return this.failed(BodyError::Read(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Whole(None) | Kind::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Whole(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Length(n) => SizeHint::with_exact(*n),
            Kind::Chunked(_) | Kind::Close => SizeHint::default(),
        }
    }
}
