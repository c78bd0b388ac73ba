//! Sending a routed request upstream: endpoint choice per attempt, retries with Envoy's
//! jittered back-off, per-try and route timeouts, and the request body kept replayable when a
//! retry or a mirror may need it.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::debug;

use super::body::{local_reply, ActiveGuard, ProxyBody, UpBody};
use super::breaker::RetryGuard;
use super::idle::DEFAULT_IDLE_TIMEOUT;
use super::lb;
use super::outlier::Attempt;
use super::retry::backoff;
pub(crate) use super::retry::RetryRt;
use super::snapshot::{cluster_name, ClusterRt};
use super::upstream::{self, Endpoint, Proto, SendOpts, UpstreamError};

static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

pub(crate) const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";
pub(crate) const UPSTREAM_TIMEOUT: &str = "upstream request timeout";
const CONNECT_FAILURE: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
/// Envoy's answer when the cluster's pending-request or active-request limit is reached.
pub(crate) const OVERFLOW: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";
static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
const RESET: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection termination";

/// The request body, buffered when a retry or mirror may replay it (and small enough).
pub(crate) enum ReqBody {
    Replay(Option<Bytes>),
    /// Streamed; `None` once handed to a connection.
    Stream(Option<Incoming>),
}

impl ReqBody {
    pub(crate) async fn new(
        body: Incoming,
        replay: bool,
        max_buffered: usize,
    ) -> Result<ReqBody, hyper::Error> {
        use http_body::Body as _;
        if body.is_end_stream() {
            return Ok(ReqBody::Replay(None));
        }
        // Like Envoy, buffering is bounded; a larger (or unsized) body streams and can be
        // retried only while it has not been sent.
        if replay
            && body
                .size_hint()
                .upper()
                .is_some_and(|n| n <= max_buffered as u64)
        {
            let bytes = body.collect().await?.to_bytes();
            return Ok(ReqBody::Replay((!bytes.is_empty()).then_some(bytes)));
        }
        Ok(ReqBody::Stream(Some(body)))
    }

    pub(crate) fn replay_bytes(&self) -> Option<Option<Bytes>> {
        match self {
            ReqBody::Replay(b) => Some(b.clone()),
            ReqBody::Stream(_) => None,
        }
    }

    fn take(&mut self) -> Option<UpBody> {
        match self {
            ReqBody::Replay(b) => Some(UpBody::Full(b.clone())),
            ReqBody::Stream(s) => s.take().map(UpBody::Stream),
        }
    }

    fn put_back(&mut self, b: UpBody) {
        if let (ReqBody::Stream(slot), UpBody::Stream(inc)) = (self, b) {
            *slot = Some(inc);
        }
    }

    fn available(&self) -> bool {
        !matches!(self, ReqBody::Stream(None))
    }
}

/// Where the attempts go.
pub(crate) enum Target {
    Cluster(Arc<ClusterRt>),
    /// The original destination itself (Istio's PassthroughCluster, or a `Passthrough` policy).
    Passthrough(Arc<Endpoint>, Duration),
}

pub(crate) struct Forward<'a> {
    pub target: Target,
    pub head: Parts,
    pub body: ReqBody,
    pub proto: Proto,
    pub retry: &'a RetryRt,
    pub timeout: Option<Duration>,
    pub hash: Option<u64>,
    pub max_idle: usize,
}

/// The response, and the endpoint that produced it (for spans and logs).
pub(crate) async fn forward(mut f: Forward<'_>) -> (Response<ProxyBody>, Option<SocketAddr>) {
    let Some(timeout) = f.timeout.filter(|t| !t.is_zero()) else {
        return attempts(&mut f, None).await;
    };
    let deadline = Instant::now() + timeout;
    match tokio::time::timeout_at(deadline, attempts(&mut f, Some(deadline))).await {
        Ok(r) => r,
        Err(_) => (
            local_reply(StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMEOUT),
            None,
        ),
    }
}

// Lives on the stack for one attempt; boxing `Sent` would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Sent(upstream::Sent),
    Failed(UpstreamError),
    TimedOut,
}

async fn attempts(
    f: &mut Forward<'_>,
    deadline: Option<Instant>,
) -> (Response<ProxyBody>, Option<SocketAddr>) {
    // Allocated only when a retry happens.
    let mut tried: Vec<usize> = Vec::new();
    let mut attempt: u32 = 0;
    let idempotent = matches!(
        f.head.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let mut stale_retried = false;
    // The retry in progress, counted against the cluster's `maxRetries` until its attempt has
    // a result (Envoy releases it when it decides on that result).
    let mut retrying: Option<RetryGuard> = None;
    loop {
        attempt += 1;
        // The circuit breaker is checked before each attempt, as Envoy's router asks the
        // connection pool for every try; an overflow is answered at once, never retried.
        // HTTP/2 upstreams multiplex one connection per endpoint, so only the active-request
        // limit (`http2MaxRequests`) applies to them, not connection slots and pending requests.
        let admitted = match &f.target {
            Target::Cluster(c) => match c.breaker.admit(f.proto == Proto::Http1).await {
                Ok(a) => Some(a),
                Err(_) => {
                    debug!(cluster = %cluster_name(&c.key), "circuit breaker overflow");
                    let mut resp = local_reply(StatusCode::SERVICE_UNAVAILABLE, OVERFLOW);
                    resp.headers_mut()
                        .insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
                    return (resp, None);
                }
            },
            _ => None,
        };
        let (slot, request) = match admitted {
            Some(a) => (a.slot, Some(a.request)),
            None => (None, None),
        };
        let (ep, idx, opts, siblings) = match &f.target {
            Target::Passthrough(ep, t) => {
                let opts = SendOpts {
                    proto: f.proto,
                    connect_timeout: *t,
                    max_idle: f.max_idle,
                    max_requests_per_connection: 0,
                    max_connections: u32::MAX,
                    idle_timeout: DEFAULT_IDLE_TIMEOUT,
                };
                (ep.clone(), 0, opts, &[][..])
            }
            Target::Cluster(c) => match lb::pick(c, f.hash, &tried) {
                Some(i) => (
                    c.endpoints[i].clone(),
                    i,
                    c.send_opts(f.proto, f.max_idle),
                    &c.endpoints[..],
                ),
                None => {
                    debug!(cluster = %cluster_name(&c.key), "no healthy upstream");
                    return (
                        local_reply(StatusCode::SERVICE_UNAVAILABLE, NO_HEALTHY_UPSTREAM),
                        None,
                    );
                }
            },
        };
        let more = attempt <= f.retry.retries;
        let Some(body) = f.body.take() else {
            // Unreachable: a consumed streaming body ends the loop below.
            return (local_reply(StatusCode::SERVICE_UNAVAILABLE, RESET), None);
        };
        // Set before the copy, which then has room for it.
        f.head
            .headers
            .insert(X_ENVOY_ATTEMPT_COUNT.clone(), number(attempt.into()));
        let head = if more {
            f.head.clone()
        } else {
            std::mem::replace(&mut f.head, Request::new(()).into_parts().0)
        };
        let req = Request::from_parts(head, body);
        // Counts the request on its endpoint, and among the cluster's active requests until
        // the response ends.
        let guard = ActiveGuard::new(ep.clone()).with_request(request);
        let started = Instant::now();
        let send = upstream::send(&ep, req, opts, slot, siblings);
        let outcome = match f.retry.per_try_timeout {
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(r) => r.map_or_else(|(e, unsent)| failed(f, e, unsent), Outcome::Sent),
                Err(_) => Outcome::TimedOut,
            },
            None => send
                .await
                .map_or_else(|(e, unsent)| failed(f, e, unsent), Outcome::Sent),
        };
        // Every attempt counts for outlier detection, retried ones included (as in Envoy),
        // except a pooled connection the peer had closed: that says nothing of the endpoint.
        if let (Target::Cluster(c), false) = (&f.target, stale_failure(&outcome)) {
            if let Some(o) = &c.outlier {
                let result = match &outcome {
                    Outcome::Sent(s) => Attempt::Status(s.resp.status().as_u16()),
                    Outcome::Failed(_) => Attempt::Failed,
                    Outcome::TimedOut => Attempt::TimedOut,
                };
                o.record(ep.addr, result, c.endpoints.len());
            }
        }
        let retriable = match &outcome {
            Outcome::Sent(s) => f.retry.on_status(s.resp.status().as_u16()),
            Outcome::Failed(e) => f.retry.on_error(e),
            Outcome::TimedOut => f.retry.on_timeout(),
        };
        let mut retry = more && f.body.available() && retriable;
        let previous = retrying.take();
        // A keep-alive connection the peer closed as the request went out (Node's 5 s
        // keepAliveTimeout and the like): resend once on a fresh connection, uncounted, when
        // the request is idempotent and can be rebuilt (as Go's HTTP client does).
        let stale = matches!(&outcome, Outcome::Failed(e) if e.is_stale_connection());
        if !retry && stale && more && idempotent && !stale_retried && f.body.available() {
            debug!(endpoint = %ep.addr, "pooled connection was closed by the peer; resending");
            stale_retried = true;
            attempt -= 1;
            retrying = previous; // the same attempt, made again
            continue;
        }
        // The retried attempt has its result: no longer outstanding (before asking for the
        // next one, which may take its place).
        match previous {
            Some(g) if !retriable => g.succeeded(),
            other => drop(other),
        }
        if let (true, Target::Cluster(c)) = (retry, &f.target) {
            retrying = c.breaker.try_retry();
            if retrying.is_none() {
                debug!(cluster = %cluster_name(&c.key), "retry overflow: maxRetries outstanding");
                retry = false;
            }
        }
        if retry {
            debug!(endpoint = %ep.addr, attempt, "retrying upstream request");
            drop(outcome); // a retried response is discarded (its connection closes)
            tried.push(idx);
            tokio::time::sleep(backoff(attempt)).await;
            continue;
        }
        let resp = match outcome {
            Outcome::Sent(sent) => {
                let ms = started.elapsed().as_millis() as u64;
                let (mut parts, inc) = sent.resp.into_parts();
                parts
                    .headers
                    .insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), number(ms));
                Response::from_parts(
                    parts,
                    ProxyBody::upstream(inc, sent.give_back, Some(guard), deadline),
                )
            }
            Outcome::Failed(e) => {
                debug!(endpoint = %ep.addr, error = %e, "upstream request failed");
                let body = if e.is_connect_failure() {
                    CONNECT_FAILURE
                } else {
                    RESET
                };
                local_reply(StatusCode::SERVICE_UNAVAILABLE, body)
            }
            Outcome::TimedOut => local_reply(StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMEOUT),
        };
        return (resp, Some(ep.addr));
    }
}

fn stale_failure(o: &Outcome) -> bool {
    matches!(o, Outcome::Failed(e) if e.is_stale_connection())
}

fn failed(f: &mut Forward<'_>, e: UpstreamError, unsent: Option<Request<UpBody>>) -> Outcome {
    if let Some(req) = unsent {
        f.body.put_back(req.into_body());
    }
    Outcome::Failed(e)
}

/// Small numbers as header values, formatted once: cloning one shares its bytes, so the
/// attempt count and service time cost no allocation per request.
fn number(n: u64) -> HeaderValue {
    static SMALL: LazyLock<Vec<HeaderValue>> =
        LazyLock::new(|| (0..1024u64).map(HeaderValue::from).collect());
    match SMALL.get(n as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(n),
    }
}
