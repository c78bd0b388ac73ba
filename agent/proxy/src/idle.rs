//! An endpoint's idle HTTP/1 connections, closed after the cluster's `idleTimeout` (Envoy's
//! `common_http_protocol_options.idle_timeout`; Istio's default is one hour).
//!
//! Connections are kept as a stack (the most recently used is reused first, as Envoy does),
//! so the oldest idle ones sit at the bottom. One reaper task per endpoint runs while it has
//! idle connections: it sleeps until the bottom one expires and closes every expired one. The
//! hot path (give back, check out) pays a lock and a clock read, never a spawned task.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use hyper::client::conn::http1;
use tokio::time::Instant;
use tracing::debug;

use super::body::UpBody;
use super::upstream::Endpoint;

/// Istio's default `idleTimeout`.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

struct Idle {
    sender: http1::SendRequest<UpBody>,
    /// Requests this connection has carried (`maxRequestsPerConnection`).
    uses: u32,
    since: Instant,
}

#[derive(Default)]
struct Inner {
    /// Oldest at the front.
    conns: Vec<Idle>,
    /// The timeout the last give-back asked for (a config change applies from then on).
    timeout: Duration,
    reaper: bool,
}

#[derive(Default)]
pub(crate) struct IdlePool(Mutex<Inner>);

impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePool")
            .field("idle", &self.lock().conns.len())
            .finish()
    }
}

impl IdlePool {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection and its use count.
    pub(crate) fn pop(&self) -> Option<(http1::SendRequest<UpBody>, u32)> {
        self.lock().conns.pop().map(|i| (i.sender, i.uses))
    }

    /// Keeps `sender` for reuse, unless `max_idle` are kept already (it then drops, which
    /// closes its connection). Starts `ep`'s reaper if none runs.
    pub(crate) fn push(
        ep: &Arc<Endpoint>,
        sender: http1::SendRequest<UpBody>,
        uses: u32,
        max_idle: usize,
        timeout: Duration,
    ) {
        let mut pool = ep.idle_h1.lock();
        if pool.conns.len() >= max_idle {
            return;
        }
        let since = Instant::now();
        pool.timeout = timeout;
        pool.conns.push(Idle {
            sender,
            uses,
            since,
        });
        // No reaper for a timeout the clock cannot reach (`0s`: none).
        if !pool.reaper && since.checked_add(timeout).is_some() {
            pool.reaper = true;
            tokio::spawn(reap(Arc::downgrade(ep)));
        }
    }
}

/// Closes `ep`'s connections idle for longer than the timeout; ends when none is left idle
/// or the endpoint is gone (no snapshot lists it).
async fn reap(ep: Weak<Endpoint>) {
    loop {
        let wake = {
            let Some(ep) = ep.upgrade() else { return };
            let mut pool = ep.idle_h1.lock();
            let now = Instant::now();
            let timeout = pool.timeout;
            let expired = pool
                .conns
                .iter()
                .take_while(|c| c.since.checked_add(timeout).is_some_and(|t| t <= now))
                .count();
            if expired > 0 {
                // Dropping the senders closes those connections.
                pool.conns.drain(..expired);
                if let Some(st) = ep.stats() {
                    st.upstream_cx_idle_timeout
                        .fetch_add(expired as u64, Ordering::Relaxed);
                }
                debug!(endpoint = %ep.addr, closed = expired, "idle upstream connections timed out");
            }
            // Nothing idle, or a timeout too long for the clock (`0s`: none): stop.
            match pool
                .conns
                .first()
                .and_then(|c| c.since.checked_add(timeout))
            {
                Some(wake) => wake,
                None => {
                    pool.reaper = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(wake).await;
    }
}
