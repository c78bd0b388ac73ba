//! Sending a routed request upstream: the route timeout over all attempts, each attempt
//! through the per-attempt layers (admission, balance, send under the per-try timeout,
//! outlier, retry; see `layers`), and the request body kept replayable when a retry or a
//! mirror may need it.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::debug;

use super::body::{local_reply, ActiveGuard, ClientBody, ProxyBody, UpBody};
use super::layers::balance::Picked;
use super::layers::retry::{Next, Retry};
use super::layers::{admission, balance, outlier, Attempted};
pub(crate) use super::retry::RetryRt;
use super::snapshot::ClusterRt;
use super::upstream::{self, Endpoint, Proto, UpstreamError};

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
const RESET: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection termination";

/// The request body, buffered when a retry or mirror may replay it (and small enough).
pub(crate) enum ReqBody {
    Replay(Option<Bytes>),
    /// Streamed; `None` once handed to a connection.
    Stream(Option<Incoming>),
}

impl ReqBody {
    pub(crate) async fn new(
        body: ClientBody,
        replay: bool,
        max_buffered: usize,
    ) -> Result<ReqBody, hyper::Error> {
        use http_body::Body as _;
        let body = match body {
            // Already in memory: replayable at no cost.
            ClientBody::Whole(b) => return Ok(ReqBody::Replay(b)),
            ClientBody::Hyper(inc) => inc,
        };
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
            flagged(
                local_reply(StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMEOUT),
                "UT",
            ),
            None,
        ),
    }
}

/// Envoy's response flag of a reply the proxy made itself, carried to the span and the metrics
/// as a response extension (never sent on the wire).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResponseFlag(pub &'static str);

fn flagged(mut resp: Response<ProxyBody>, flag: &'static str) -> Response<ProxyBody> {
    resp.extensions_mut().insert(ResponseFlag(flag));
    resp
}

// Lives on the stack for one attempt; boxing `Sent` would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Sent(upstream::Sent),
    Failed(UpstreamError),
    TimedOut,
}

impl Outcome {
    fn result(&self) -> Attempted<'_> {
        match self {
            Outcome::Sent(s) => Attempted::Status(s.resp.status().as_u16()),
            Outcome::Failed(e) => Attempted::Failed(e),
            Outcome::TimedOut => Attempted::TimedOut,
        }
    }
}

/// The attempts, each through the per-attempt layers in order: admission, balance, the send,
/// outlier recording, then the retry decision (see `layers`).
async fn attempts(
    f: &mut Forward<'_>,
    deadline: Option<Instant>,
) -> (Response<ProxyBody>, Option<SocketAddr>) {
    let Forward {
        target,
        head,
        body,
        proto,
        retry: policy,
        hash,
        max_idle,
        ..
    } = f;
    let (target, proto) = (&*target, *proto);
    let mut retry = Retry::new(policy, target, &head.method);
    loop {
        let attempt = retry.begin();
        let admitted = match admission::admit(target, proto).await {
            Ok(a) => a,
            Err(reply) => return (flagged(reply.response(), reply.flag()), None),
        };
        let picked = match balance::pick(target, *hash, retry.tried(), proto, *max_idle) {
            Ok(p) => p,
            Err(reply) => return (flagged(reply.response(), reply.flag()), None),
        };
        let Some(up_body) = body.take() else {
            // Unreachable: a consumed streaming body ends the attempts (retry sees it).
            return (local_reply(StatusCode::SERVICE_UNAVAILABLE, RESET), None);
        };
        head.headers
            .insert(X_ENVOY_ATTEMPT_COUNT.clone(), number(attempt.into()));
        // Counts the request on its endpoint, and among the cluster's active requests until
        // the response ends.
        let waited = admitted.waited;
        let guard = ActiveGuard::new(picked.ep.clone()).with_request(admitted.request);
        let started = Instant::now();
        let outcome = send(
            &picked,
            head,
            up_body,
            admitted.slot,
            retry.per_try_timeout(),
            body,
        )
        .await;
        if matches!(&outcome, Outcome::Failed(e) if e.is_connect_failure()) {
            admission::connect_failed(target, waited);
        }
        outlier::record(target, picked.ep.addr, outcome.result());
        match retry.after(outcome.result(), picked.idx, body.available()) {
            Next::Resend => {
                debug!(endpoint = %picked.ep.addr, "pooled connection was closed by the peer; resending");
                continue;
            }
            Next::Retry(wait) => {
                debug!(endpoint = %picked.ep.addr, attempt, "retrying upstream request");
                drop(outcome); // a retried response is discarded (its connection closes)
                tokio::time::sleep(wait).await;
                continue;
            }
            Next::Done => {}
        }
        let addr = picked.ep.addr;
        let resp = match outcome {
            Outcome::Sent(sent) => {
                let ms = started.elapsed().as_millis() as u64;
                let (mut parts, inc) = sent.resp.into_parts();
                parts
                    .headers
                    .insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), number(ms));
                Response::from_parts(parts, ProxyBody::upstream(inc, Some(guard), deadline))
            }
            Outcome::Failed(e) => {
                debug!(endpoint = %addr, error = %e, "upstream request failed");
                // Envoy: connect failure, or the upstream connection ended; URX once retries
                // were spent on it (in the order Envoy prints flags).
                let (body, flag) = match (e.is_connect_failure(), attempt > 1) {
                    (true, false) => (CONNECT_FAILURE, "UF"),
                    (true, true) => (CONNECT_FAILURE, "UF,URX"),
                    (false, false) => (RESET, "UC"),
                    (false, true) => (RESET, "UC,URX"),
                };
                flagged(local_reply(StatusCode::SERVICE_UNAVAILABLE, body), flag)
            }
            Outcome::TimedOut => flagged(
                local_reply(StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMEOUT),
                if attempt > 1 { "UT,URX" } else { "UT" },
            ),
        };
        return (resp, Some(addr));
    }
}

/// One attempt's send to the picked endpoint, under the per-try timeout. A request that never
/// reached a connection gives its body back, so even a streamed one can be retried.
async fn send(
    picked: &Picked<'_>,
    head: &Parts,
    up_body: UpBody,
    slot: Option<OwnedSemaphorePermit>,
    per_try_timeout: Option<Duration>,
    body: &mut ReqBody,
) -> Outcome {
    let send = upstream::send(
        &picked.ep,
        head,
        up_body,
        picked.opts,
        slot,
        picked.siblings,
    );
    let sent = match per_try_timeout {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => return Outcome::TimedOut,
        },
        None => send.await,
    };
    match sent {
        Ok(s) => Outcome::Sent(s),
        Err((e, unsent)) => {
            if let Some(b) = unsent {
                body.put_back(b);
            }
            Outcome::Failed(e)
        }
    }
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
