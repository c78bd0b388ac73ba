//! Upstream connections: one keep-alive pool per endpoint address, shared by every cluster
//! and config snapshot that lists the address (a config swap keeps warm connections).
//!
//! HTTP/1.1 connections are checked out exclusively and given back when the response body
//! ends; an HTTP/2 connection (h2c, prior knowledge) is shared by all requests to the
//! endpoint. The upstream protocol follows the downstream one, like Istio's
//! `useClientProtocol`: gRPC and other h2 traffic stays h2 end to end.
//!
//! Locks here guard plain `Vec`/`Option` pushes and pops and are never held across an await.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use super::body::UpBody;
use super::breaker::{ClusterStats, CxGuard};
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
    #[error("HTTP handshake with {addr}")]
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
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// Envoy's `connect-failure`: the TCP (or HTTP) connection could not be set up.
    pub(crate) fn is_connect_failure(&self) -> bool {
        !matches!(self, UpstreamError::Reset { .. })
    }

    /// The peer closed an idle keep-alive connection just as the request went out on it
    /// (nothing came back): the request most likely never reached the application.
    pub(crate) fn is_stale_connection(&self) -> bool {
        matches!(self, UpstreamError::Reset { reused: true, source, .. } if source.is_incomplete_message())
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

    fn pop_idle(&self) -> Option<(http1::SendRequest<UpBody>, u32, usize)> {
        self.idle_h1.pop()
    }

    fn put_idle(
        self: &Arc<Self>,
        sender: http1::SendRequest<UpBody>,
        uses: u32,
        home: usize,
        opts: SendOpts,
    ) {
        IdlePool::push(self, sender, uses, home, opts.max_idle, opts.idle_timeout);
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

/// An HTTP/1 connection lent to one response; back to the pool when its body ends.
pub(crate) struct PoolReturn {
    sender: http1::SendRequest<UpBody>,
    /// Requests this connection has carried, this one included.
    uses: u32,
    /// The idle stack of the worker whose runtime runs the connection (`idle.rs`).
    home: usize,
    ep: Arc<Endpoint>,
    opts: SendOpts,
    /// The cluster's request slot (`maxConnections`): released only once the connection is
    /// back in the pool or closed, so a waiting request finds it there.
    _slot: Option<OwnedSemaphorePermit>,
}

impl PoolReturn {
    pub(crate) fn give_back(self) {
        let PoolReturn {
            mut sender,
            uses,
            home,
            ep,
            opts,
            _slot,
        } = self;
        let max_rq = opts.max_requests_per_connection;
        if max_rq > 0 && uses >= max_rq {
            // Dropping the last sender closes the connection (Envoy's `upstream_cx_max_requests`).
            if let Some(st) = &ep.stats {
                st.upstream_cx_max_requests.fetch_add(1, Ordering::Relaxed);
            }
            debug!(endpoint = %ep.addr, uses, "closing upstream connection: maxRequestsPerConnection");
            return;
        }
        if sender.is_ready() {
            ep.put_idle(sender, uses, home, opts);
        } else if !sender.is_closed() {
            // The connection task has not yet seen the end of the response (it runs on its own
            // task): wait for it rather than lose a warm connection.
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    ep.put_idle(sender, uses, home, opts);
                }
                drop(_slot);
            });
        }
    }
}

pub(crate) struct Sent {
    pub resp: Response<Incoming>,
    pub give_back: Option<PoolReturn>,
}

/// A failed send, with the request when it never reached a connection (so it can be retried
/// even if its body streams).
pub(crate) type SendFailure = (UpstreamError, Option<Request<UpBody>>);

/// `slot` is the cluster's circuit-breaker permit and `siblings` the cluster's endpoints (idle
/// connections there may be closed to stay within `maxConnections`).
pub(crate) async fn send(
    ep: &Arc<Endpoint>,
    req: Request<UpBody>,
    opts: SendOpts,
    slot: Option<OwnedSemaphorePermit>,
    siblings: &[Arc<Endpoint>],
) -> Result<Sent, SendFailure> {
    match opts.proto {
        Proto::Http1 => send_h1(ep, req, opts, slot, siblings).await,
        Proto::Http2 => send_h2(ep, req, opts).await,
    }
}

async fn send_h1(
    ep: &Arc<Endpoint>,
    mut req: Request<UpBody>,
    opts: SendOpts,
    slot: Option<OwnedSemaphorePermit>,
    siblings: &[Arc<Endpoint>],
) -> Result<Sent, SendFailure> {
    while let Some((mut sender, uses, home)) = ep.pop_idle() {
        if !sender.is_ready() {
            continue; // closed by the peer while idle
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(sent_h1(resp, sender, uses + 1, home, ep, opts, slot)),
            Err(mut e) => match e.take_message() {
                // Never written: the idle connection was stale. Try the next one.
                Some(r) => req = r,
                None => {
                    return Err((
                        UpstreamError::Reset {
                            addr: ep.addr,
                            reused: true,
                            source: e.into_error(),
                        },
                        None,
                    ))
                }
            },
        }
    }
    make_room(ep, siblings, opts.max_connections);
    let mut sender = match connect_h1(ep, opts.connect_timeout).await {
        Ok(s) => s,
        Err(e) => return Err((e, Some(req))),
    };
    let home = ep.idle_h1.here();
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(sent_h1(resp, sender, 1, home, ep, opts, slot)),
        Err(mut e) => {
            let req = e.take_message();
            Err((
                UpstreamError::Reset {
                    addr: ep.addr,
                    reused: false,
                    source: e.into_error(),
                },
                req,
            ))
        }
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
    resp: Response<Incoming>,
    sender: http1::SendRequest<UpBody>,
    uses: u32,
    home: usize,
    ep: &Arc<Endpoint>,
    opts: SendOpts,
    slot: Option<OwnedSemaphorePermit>,
) -> Sent {
    let give_back = PoolReturn {
        sender,
        uses,
        home,
        ep: ep.clone(),
        opts,
        _slot: slot,
    };
    Sent {
        resp,
        give_back: Some(give_back),
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
            Err(e) => return Err((e, Some(req))),
        },
    };
    if let Err(source) = sender.ready().await {
        return Err((
            UpstreamError::Reset {
                addr: ep.addr,
                reused,
                source,
            },
            Some(req),
        ));
    }
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(Sent {
            resp,
            give_back: None,
        }),
        Err(mut e) => {
            let req = e.take_message();
            Err((
                UpstreamError::Reset {
                    addr: ep.addr,
                    reused,
                    source: e.into_error(),
                },
                req,
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

async fn connect_h1(
    ep: &Endpoint,
    timeout: Duration,
) -> Result<http1::SendRequest<UpBody>, UpstreamError> {
    let addr = ep.addr;
    let stream = connect(addr, timeout).await?;
    let cx = ep.stats.clone().map(CxGuard::new);
    // One buffer per write, as on the downstream side (`server::builder`).
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| UpstreamError::Handshake { addr, source })?;
    tokio::spawn(async move {
        // The connection counts as open (per cluster) while this task runs.
        let _cx = cx;
        // `with_upgrades`: a 101 answer (WebSocket) hands the socket over to the tunnel.
        if let Err(error) = conn.with_upgrades().await {
            debug!(%addr, %error, "upstream HTTP/1 connection ended with an error");
        }
    });
    Ok(sender)
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
