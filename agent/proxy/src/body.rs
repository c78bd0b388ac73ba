//! Body types: what the proxy sends upstream ([`UpBody`]) and answers downstream
//! ([`ProxyBody`]), plus local replies.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::breaker::RqGuard;
use super::h1;
use super::upstream::Endpoint;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body: streamed by hyper's server, or read whole with its head by the
/// proxy's own HTTP/1 server (`h1::serve`).
#[derive(Debug)]
pub(crate) enum ClientBody {
    Hyper(Incoming),
    Whole(Option<Bytes>),
}

/// A request body sent upstream: buffered (replayable for retries and mirrors) or streamed
/// straight from the client.
#[derive(Debug)]
pub(crate) enum UpBody {
    Full(Option<Bytes>),
    Stream(Incoming),
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Stream(inc) => Pin::new(inc).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Full(b) => b.is_none(),
            UpBody::Stream(inc) => inc.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Stream(inc) => inc.size_hint(),
        }
    }
}

/// Counts a request against its endpoint's in-flight requests until dropped, and against
/// its cluster's active requests (`http2MaxRequests`) when it carries that count.
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    ep: Arc<Endpoint>,
    _request: Option<RqGuard>,
}

impl ActiveGuard {
    pub(crate) fn new(ep: Arc<Endpoint>) -> ActiveGuard {
        ep.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { ep, _request: None }
    }

    pub(crate) fn with_request(mut self, request: Option<RqGuard>) -> ActiveGuard {
        self._request = request;
        self
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.ep.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream response body: from the proxy's HTTP/1 client, or hyper's HTTP/2 one.
pub(crate) enum UpResp {
    Http1(h1::Body),
    Http2(Incoming),
}

impl UpResp {
    /// No body (a `101` answer, whose connection went to the tunnel).
    pub(crate) fn empty() -> UpResp {
        UpResp::Http1(h1::Body::empty())
    }

    /// Stops reading: an HTTP/1 connection closes instead of going back to its pool.
    fn abandon(&mut self) {
        if let UpResp::Http1(b) = self {
            b.abandon();
        }
    }
}

impl Body for UpResp {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match self.get_mut() {
            UpResp::Http1(b) => ready!(Pin::new(b).poll_frame(cx)).map(|f| f.map_err(Into::into)),
            UpResp::Http2(b) => ready!(Pin::new(b).poll_frame(cx)).map(|f| f.map_err(Into::into)),
        };
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpResp::Http1(b) => b.is_end_stream(),
            UpResp::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpResp::Http1(b) => b.size_hint(),
            UpResp::Http2(b) => b.size_hint(),
        }
    }
}

/// The downstream response body.
pub(crate) struct ProxyBody(Inner);

// The upstream variant holds an HTTP/1 connection while it streams; boxing it would cost an
// allocation per request.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

/// An upstream response body streamed to the client. It keeps the endpoint's in-flight count
/// up (and an HTTP/1 connection checked out) until the last byte, and enforces what is left of
/// the route timeout (Envoy's route timeout covers the whole response).
pub(crate) struct UpstreamBody {
    inner: UpResp,
    _active: Option<ActiveGuard>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("upstream request timeout while streaming the response body")]
pub(crate) struct BodyTimeout;

impl ProxyBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> ProxyBody {
        let b = b.into();
        ProxyBody(Inner::Full(if b.is_empty() { None } else { Some(b) }))
    }

    pub(crate) fn upstream(
        inner: UpResp,
        active: Option<ActiveGuard>,
        deadline: Option<tokio::time::Instant>,
    ) -> ProxyBody {
        let mut body = UpstreamBody {
            inner,
            _active: active,
            deadline: None,
        };
        if let Some(d) = deadline.filter(|_| !body.inner.is_end_stream()) {
            body.deadline = Some(Box::pin(tokio::time::sleep_until(d)));
        }
        ProxyBody(Inner::Upstream(body))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(up) => {
                if let Some(d) = up.deadline.as_mut() {
                    if d.as_mut().poll(cx).is_ready() {
                        up.inner.abandon(); // a half-read HTTP/1 response cannot be reused
                        return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                    }
                }
                let frame = ready!(Pin::new(&mut up.inner).poll_frame(cx));
                if !matches!(frame, Some(Ok(_))) || up.inner.is_end_stream() {
                    up.deadline = None;
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(up) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(up) => up.inner.size_hint(),
        }
    }
}

/// A reply the proxy makes itself; a non-empty body is `text/plain`, as Envoy's local replies.
pub(crate) fn local_reply(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let body = body.into();
    let mut resp = Response::new(ProxyBody::full(body.clone()));
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp
}
