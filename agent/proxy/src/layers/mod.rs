//! The proxy's request path as named layers, each a small unit with its own tests:
//!
//! ```text
//! handler::handle                 request id / trace headers, span
//!   route      (route.rs)         listener and first matching route, or passthrough, or 404
//!   fault      (fault.rs)         delay, then abort, at the route's percentages
//!   cors       (cors.rs)          the route's `corsPolicy`: preflights answered, grants added
//!   [redirect | direct response | upstream:] rewrite and header operations (handler.rs)
//!   mirror     (mirror.rs)        a copy to the mirror cluster, `-shadow` host, at a percentage
//!   forward    (forward.rs)       route timeout over all attempts; then, per attempt:
//!     admission  (admission.rs)   the cluster's circuit breaker: slot, pending, active requests
//!     balance    (balance.rs)     an endpoint by the cluster's policy, skipping ejected/tried
//!     upstream   (forward.rs)     the send, under the per-try timeout
//!     outlier    (outlier.rs)     the attempt's result recorded against its endpoint
//!     retry      (retry.rs)       retry or not: `retryOn`, `attempts`, `maxRetries`, back-off
//! ```
//!
//! Composition: each layer is a plain function (`async` where it waits) that either hands the
//! next stage what it needs or answers the request itself with a [`Reply`], as Envoy's filters
//! send local replies; the stages are called in the fixed order above by `handler.rs` and
//! `forward.rs`. Not `tower`, because:
//! - a request's layers borrow from its config snapshot (`&RouteRt`, the route's matcher, the
//!   cluster's breaker and balancer); `tower::Service` futures are effectively `'static`, so
//!   each layer would clone `Arc`s or box its future, costing allocations per request, where
//!   this chain compiles to one state machine per request, as the hand-written path did;
//! - its retry middleware replays by cloning the request, while ours retries a streamed body
//!   only while it is unsent (handed back by a failed send), and its concurrency limits have
//!   no notion of Envoy's pending queue, overflow answers and counters;
//! - what a layer grants outlives the call: the breaker's request guard travels inside the
//!   response body until its last byte, which a stack of `Service::call`s would obscure.
//!
//! Nothing here is rebuilt per request and no layer takes a lock shared by all clusters:
//! admission is atomics and the cluster's connection-slot semaphore, balancing atomics (and
//! the cluster's detector lock only while it has ejected endpoints), outlier recording the
//! cluster's detector lock (it was one lock for every cluster, and cloned the cluster key per
//! result).

pub(crate) mod admission;
pub(crate) mod balance;
pub(crate) mod cors;
pub(crate) mod fault;
pub(crate) mod mirror;
pub(crate) mod outlier;
pub(crate) mod retry;
pub(crate) mod route;
#[cfg(test)]
pub(crate) mod testing;

use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::body::{local_reply, ProxyBody};
use super::forward::{NO_HEALTHY_UPSTREAM, OVERFLOW};
use super::upstream::UpstreamError;

static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");

/// A layer's own answer instead of passing the request on (Envoy's local replies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// No original destination, no route matches, or the client connected to the proxy
    /// itself: Envoy's "no route", 404 with an empty body.
    NoRoute,
    /// The route's destination is not a cluster the config defines: 503, empty body.
    ClusterNotFound,
    /// Fault injection's abort, with its status.
    FaultAbort(StatusCode),
    /// Fault injection's gRPC abort of a gRPC request, with its gRPC status code.
    GrpcAbort(u8),
    /// The circuit breaker refused the attempt: 503 `x-envoy-overloaded`.
    Overflow,
    /// The cluster has no endpoint to send to (none, or all ejected).
    NoHealthyUpstream,
}

impl Reply {
    /// Envoy's response flag for this reply, as access logs, spans and metrics report it.
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Reply::NoRoute => "NR",
            Reply::ClusterNotFound => "NC",
            Reply::FaultAbort(_) | Reply::GrpcAbort(_) => "FI",
            Reply::Overflow => "UO",
            Reply::NoHealthyUpstream => "UH",
        }
    }

    pub(crate) fn response(self) -> Response<ProxyBody> {
        match self {
            Reply::NoRoute => local_reply(StatusCode::NOT_FOUND, ""),
            Reply::ClusterNotFound => local_reply(StatusCode::SERVICE_UNAVAILABLE, ""),
            Reply::FaultAbort(status) => local_reply(status, "fault filter abort"),
            Reply::GrpcAbort(code) => grpc_reply(code, "fault filter abort"),
            Reply::Overflow => {
                let mut resp = local_reply(StatusCode::SERVICE_UNAVAILABLE, OVERFLOW);
                resp.headers_mut()
                    .insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
                resp
            }
            Reply::NoHealthyUpstream => {
                local_reply(StatusCode::SERVICE_UNAVAILABLE, NO_HEALTHY_UPSTREAM)
            }
        }
    }
}

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// A gRPC "trailers-only" answer: HTTP 200, `application/grpc`, the status and message in the
/// only header block and no body, as Envoy's local replies to gRPC requests are.
fn grpc_reply(code: u8, message: &'static str) -> Response<ProxyBody> {
    let mut resp = local_reply(StatusCode::OK, "");
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(code)));
    h.insert(GRPC_MESSAGE.clone(), HeaderValue::from_static(message));
    resp
}

/// What one upstream attempt came to, as the outlier and retry layers see it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Attempted<'e> {
    /// Response headers arrived with this status.
    Status(u16),
    /// No response: the connection failed or was reset.
    Failed(&'e UpstreamError),
    /// The per-try timeout fired first.
    TimedOut,
}

/// True `pct` percent of the time (0.0..=100.0; at or above 100 always, at or below 0 never).
pub(crate) fn roll(pct: f64) -> bool {
    pct >= 100.0 || (pct > 0.0 && fastrand::f64() * 100.0 < pct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn roll_hits_its_percentage() {
        assert!((0..1000).all(|_| roll(100.0)));
        assert!((0..1000).all(|_| roll(150.0)));
        assert!((0..1000).all(|_| !roll(0.0)));
        assert!((0..1000).all(|_| !roll(-5.0)));
        let hits = (0..10_000).filter(|_| roll(20.0)).count();
        // Binomial(10000, 0.2): sd = 40; ±5 sd.
        assert!((1800..=2200).contains(&hits), "{hits} of 10000 at 20%");
    }

    async fn body(r: Response<ProxyBody>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn replies_are_envoys() {
        let r = Reply::NoRoute.response();
        assert_eq!(r.status(), 404);
        assert_eq!(body(r).await, "");
        let r = Reply::ClusterNotFound.response();
        assert_eq!(r.status(), 503);
        assert_eq!(body(r).await, "");
        let r = Reply::Overflow.response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["x-envoy-overloaded"], "true");
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert_eq!(body(r).await, OVERFLOW);
        let r = Reply::NoHealthyUpstream.response();
        assert_eq!(r.status(), 503);
        assert!(r.headers().get("x-envoy-overloaded").is_none());
        assert_eq!(body(r).await, NO_HEALTHY_UPSTREAM);
        let r = Reply::FaultAbort(StatusCode::IM_A_TEAPOT).response();
        assert_eq!(r.status(), 418);
        assert_eq!(body(r).await, "fault filter abort");
        let r = Reply::GrpcAbort(14).response();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "fault filter abort");
        assert_eq!(body(r).await, "");
    }
}
