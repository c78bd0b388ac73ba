//! Upstream connections: one keep-alive pool per endpoint address, shared by every cluster
//! and config snapshot that lists the address (a config swap keeps warm connections).
//!
//! HTTP/1.1 connections (the proxy's own client, `h1`) are checked out exclusively and given
//! back when the response body ends; an HTTP/2 connection (h2c, prior knowledge) is shared by all requests to the
//! endpoint. The upstream protocol follows the downstream one, like Istio's
//! `useClientProtocol`: gRPC and other h2 traffic stays h2 end to end.
//!
//! Locks here guard plain `Vec`/`Option` pushes and pops and are never held across an await.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use super::body::{UpBody, UpResp};
use super::breaker::{ClusterStats, CxGuard};
use super::h1;
use super::idle::IdlePool;
use super::idle_h2::H2Slot;

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("HTTP/2 handshake with {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("request to {addr} reset before the response headers")]
    Reset {
        addr: SocketAddr,
        /// Sent on a pooled keep-alive connection (not a fresh one).
        reused: bool,
        #[source]
        source: ResetSource,
    },
}

/// What ended an exchange before its response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResetSource {
    #[error(transparent)]
    Http1(#[from] h1::SendError),
    #[error(transparent)]
    Http2(#[from] hyper::Error),
}

impl UpstreamError {
    /// Envoy's `connect-failure`: the TCP (or HTTP) connection could not be set up.
    pub(crate) fn is_connect_failure(&self) -> bool {
        !matches!(self, UpstreamError::Reset { .. })
    }

    /// The peer closed an idle keep-alive connection just as the request went out on it
    /// (nothing came back): the request most likely never reached the application.
    pub(crate) fn is_stale_connection(&self) -> bool {
        match self {
            UpstreamError::Reset {
                reused: true,
                source,
                ..
            } => match source {
                ResetSource::Http1(e) => matches!(e, h1::SendError::Closed),
                ResetSource::Http2(e) => e.is_incomplete_message(),
            },
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    Http1,
    Http2,
}

/// One upstream address: its in-flight request count (least-request balancing) and pool.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub addr: SocketAddr,
    /// Requests sent and not yet finished (response body ended or dropped).
    pub active: AtomicU32,
    /// Idle HTTP/1 connections (`idle.rs`).
    pub(crate) idle_h1: IdlePool,
    /// The shared HTTP/2 connection (`idle_h2.rs`).
    pub(crate) h2: H2Slot,
    /// The owning cluster's stats (`None` for passthrough): connections are counted there.
    stats: Option<Arc<ClusterStats>>,
    /// When it joined a cluster the proxy already had (slow start); unset otherwise.
    pub(crate) joined: std::sync::OnceLock<std::time::Instant>,
}

impl Endpoint {
    pub(crate) fn new(addr: SocketAddr, stats: Option<Arc<ClusterStats>>) -> Endpoint {
        Endpoint {
            addr,
            active: AtomicU32::new(0),
            idle_h1: IdlePool::default(),
            h2: H2Slot::default(),
            stats,
            joined: std::sync::OnceLock::new(),
        }
    }

    fn pop_idle(&self) -> Option<h1::Conn> {
        self.idle_h1.pop()
    }

    /// The owning cluster's stats.
    pub(crate) fn stats(&self) -> Option<&Arc<ClusterStats>> {
        self.stats.as_ref()
    }
}

/// Per-send settings from the cluster's policy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SendOpts {
    pub proto: Proto,
    pub connect_timeout: Duration,
    pub max_idle: usize,
    /// `maxRequestsPerConnection`; 0 is unlimited.
    pub max_requests_per_connection: u32,
    /// `maxConnections` of the cluster; `u32::MAX` is unlimited.
    pub max_connections: u32,
    /// `idleTimeout`: how long an HTTP/1 connection stays in the pool unused, and an HTTP/2
    /// one open without a request.
    pub idle_timeout: Duration,
}

/// Where an HTTP/1 connection goes once its response is read: back to its endpoint's pool.
pub(crate) struct GiveBack {
    ep: Arc<Endpoint>,
    opts: SendOpts,
    /// The cluster's request slot (`maxConnections`): released only once the connection is
    /// back in the pool or closed, so a waiting request finds it there.
    _slot: Option<OwnedSemaphorePermit>,
}

impl GiveBack {
    pub(crate) fn give_back(self, conn: h1::Conn) {
        let GiveBack { ep, opts, _slot } = self;
        let max_rq = opts.max_requests_per_connection;
        if max_rq > 0 && conn.uses >= max_rq {
            // Dropping it closes the connection (Envoy's `upstream_cx_max_requests`).
            if let Some(st) = &ep.stats {
                st.upstream_cx_max_requests.fetch_add(1, Ordering::Relaxed);
            }
            debug!(endpoint = %ep.addr, uses = conn.uses, "closing upstream connection: maxRequestsPerConnection");
            return;
        }
        IdlePool::push(&ep, conn, opts.max_idle, opts.idle_timeout);
    }
}

pub(crate) struct Sent {
    pub resp: Response<UpResp>,
}

/// A failed send, with the request's body when it never reached a connection (so it can be
/// retried even if its body streams).
pub(crate) type SendFailure = (UpstreamError, Option<UpBody>);

/// `slot` is the cluster's circuit-breaker permit and `siblings` the cluster's endpoints (idle
/// connections there may be closed to stay within `maxConnections`).
/// The head is borrowed: HTTP/1 writes it from there, so a request that may be retried needs
/// no copy of it.
pub(crate) async fn send(
    ep: &Arc<Endpoint>,
    head: &Parts,
    body: UpBody,
    opts: SendOpts,
    slot: Option<OwnedSemaphorePermit>,
    siblings: &[Arc<Endpoint>],
) -> Result<Sent, SendFailure> {
    match opts.proto {
        Proto::Http1 => send_h1(ep, head, body, opts, slot, siblings).await,
        Proto::Http2 => send_h2(ep, Request::from_parts(head.clone(), body), opts).await,
    }
}

async fn send_h1(
    ep: &Arc<Endpoint>,
    head: &Parts,
    mut body: UpBody,
    opts: SendOpts,
    slot: Option<OwnedSemaphorePermit>,
    siblings: &[Arc<Endpoint>],
) -> Result<Sent, SendFailure> {
    while let Some(mut conn) = ep.pop_idle() {
        if !conn.is_usable() {
            continue; // closed by the peer while idle
        }
        match h1::send(conn, head, body).await {
            Ok(answer) => return Ok(sent_h1(answer, ep, opts, slot)),
            // Never written: the idle connection was stale. Try the next one.
            Err(h1::Failed {
                unsent: Some(b), ..
            }) => body = b,
            Err(h1::Failed { error, .. }) => {
                return Err((
                    UpstreamError::Reset {
                        addr: ep.addr,
                        reused: true,
                        source: error.into(),
                    },
                    None,
                ))
            }
        }
    }
    make_room(ep, siblings, opts.max_connections);
    let conn = match connect_h1(ep, opts.connect_timeout).await {
        Ok(c) => c,
        Err(e) => return Err((e, Some(body))),
    };
    match h1::send(conn, head, body).await {
        Ok(answer) => Ok(sent_h1(answer, ep, opts, slot)),
        Err(h1::Failed { error, unsent }) => Err((
            UpstreamError::Reset {
                addr: ep.addr,
                reused: false,
                source: error.into(),
            },
            unsent,
        )),
    }
}

/// At the cluster's connection limit, a new connection first closes an idle one of another
/// endpoint: requests in flight are already bounded by the slots, so idle ones are the excess.
fn make_room(ep: &Arc<Endpoint>, siblings: &[Arc<Endpoint>], max_connections: u32) {
    let Some(st) = &ep.stats else { return };
    if st.upstream_cx_active.load(Ordering::Relaxed) < u64::from(max_connections) {
        return;
    }
    for s in siblings.iter().filter(|s| !Arc::ptr_eq(s, ep)) {
        if s.pop_idle().is_some() {
            return; // dropped: that connection closes
        }
    }
}

fn sent_h1(
    answer: h1::Answer,
    ep: &Arc<Endpoint>,
    opts: SendOpts,
    slot: Option<OwnedSemaphorePermit>,
) -> Sent {
    let h1::Answer {
        head,
        conn,
        request_sent,
    } = answer;
    let (mut parts, ()) = head.response.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // The socket now belongs to the tunnel (`upgrade`).
        parts.extensions.insert(h1::Upgraded::new(conn));
        return Sent {
            resp: Response::from_parts(parts, UpResp::empty()),
        };
    }
    let back = GiveBack {
        ep: ep.clone(),
        opts,
        _slot: slot,
    };
    let reusable = head.keep_alive && request_sent;
    let body = h1::Body::new(head.framing, reusable, conn, back);
    Sent {
        resp: Response::from_parts(parts, UpResp::Http1(body)),
    }
}

async fn send_h2(
    ep: &Arc<Endpoint>,
    req: Request<UpBody>,
    opts: SendOpts,
) -> Result<Sent, SendFailure> {
    let shared = ep.h2.checkout();
    let reused = shared.is_some();
    let mut sender = match shared {
        Some(s) => s,
        None => match connect_h2(ep, opts.connect_timeout).await {
            Ok(s) => {
                H2Slot::install(ep, s.clone(), opts.idle_timeout);
                s
            }
            Err(e) => return Err((e, Some(req.into_body()))),
        },
    };
    if let Err(source) = sender.ready().await {
        return Err((
            UpstreamError::Reset {
                addr: ep.addr,
                reused,
                source: source.into(),
            },
            Some(req.into_body()),
        ));
    }
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(Sent {
            resp: resp.map(UpResp::Http2),
        }),
        Err(mut e) => {
            let body = e.take_message().map(Request::into_body);
            Err((
                UpstreamError::Reset {
                    addr: ep.addr,
                    reused,
                    source: e.into_error().into(),
                },
                body,
            ))
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            // Requests are small writes answered by the peer: Nagle would only add latency.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(source)) => Err(UpstreamError::Connect { addr, source }),
        Err(_) => Err(UpstreamError::ConnectTimeout { addr, timeout }),
    }
}

async fn connect_h1(ep: &Endpoint, timeout: Duration) -> Result<h1::Conn, UpstreamError> {
    let stream = connect(ep.addr, timeout).await?;
    let cx = ep.stats.clone().map(CxGuard::new);
    Ok(h1::Conn::new(stream, ep.idle_h1.here(), cx))
}

async fn connect_h2(
    ep: &Endpoint,
    timeout: Duration,
) -> Result<http2::SendRequest<UpBody>, UpstreamError> {
    let addr = ep.addr;
    let stream = connect(addr, timeout).await?;
    let cx = ep.stats.clone().map(CxGuard::new);
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| UpstreamError::Handshake { addr, source })?;
    tokio::spawn(async move {
        let _cx = cx;
        if let Err(error) = conn.await {
            debug!(%addr, %error, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}
