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
use super::upstream::{Endpoint, PoolReturn};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// The downstream response body.
pub(crate) struct ProxyBody(Inner);

enum Inner {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

/// An upstream response body streamed to the client. It keeps the endpoint's in-flight count
/// up and its HTTP/1 connection checked out until the last byte, and enforces what is left of
/// the route timeout (Envoy's route timeout covers the whole response).
pub(crate) struct UpstreamBody {
    inner: Incoming,
    give_back: Option<PoolReturn>,
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
        inner: Incoming,
        give_back: Option<PoolReturn>,
        active: Option<ActiveGuard>,
        deadline: Option<tokio::time::Instant>,
    ) -> ProxyBody {
        let mut body = UpstreamBody {
            inner,
            give_back,
            _active: active,
            deadline: None,
        };
        if body.inner.is_end_stream() {
            // Nothing will poll an empty body: release the connection now.
            if let Some(g) = body.give_back.take() {
                g.give_back();
            }
        } else if let Some(d) = deadline {
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
                        up.give_back = None; // a half-read HTTP/1 response cannot be reused
                        return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                    }
                }
                let frame = ready!(Pin::new(&mut up.inner).poll_frame(cx));
                match &frame {
                    Some(Ok(_)) if !up.inner.is_end_stream() => {}
                    Some(Err(_)) => up.give_back = None,
                    // Done (the last frame, or the end): the connection can serve another.
                    _ => {
                        if let Some(g) = up.give_back.take() {
                            g.give_back();
                        }
                        up.deadline = None;
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
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
