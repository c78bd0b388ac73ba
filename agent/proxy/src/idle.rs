//! An endpoint's idle HTTP/1 connections, closed after the cluster's `idleTimeout` (Envoy's
//! `common_http_protocol_options.idle_timeout`; Istio's default is one hour).
//!
//! Connections are kept as a stack (the most recently used is reused first, as Envoy does),
//! so the oldest idle ones sit at the bottom. One reaper task per endpoint runs while it has
//! idle connections: it sleeps until the bottom one expires and closes every expired one. The
//! hot path (give back, check out) pays a lock and a clock read, never a spawned task.
//!
//! Each proxy worker thread has its own stack (`workers`): an upstream connection's task runs
//! on the worker that opened it (its home), and a request that reuses one of its own thread's
//! wakes no other thread. A worker with none idle takes another worker's before it opens a new
//! one (a cluster's `maxConnections` counts them all), and gives it back to its home's stack.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use hyper::client::conn::http1;
use tokio::time::Instant;
use tracing::debug;

use super::body::UpBody;
use super::upstream::Endpoint;
use super::workers;

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

/// One stack per worker thread.
pub(crate) struct IdlePool(Box<[Mutex<Inner>]>);

impl Default for IdlePool {
    fn default() -> Self {
        IdlePool((0..workers::slots()).map(|_| Mutex::default()).collect())
    }
}

impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = (0..self.0.len()).map(|i| self.lock(i).conns.len()).sum();
        f.debug_struct("IdlePool").field("idle", &idle).finish()
    }
}

impl IdlePool {
    fn lock(&self, slot: usize) -> MutexGuard<'_, Inner> {
        self.0[slot].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The calling thread's stack (the first off the workers): the home of the connections it
    /// opens.
    pub(crate) fn here(&self) -> usize {
        workers::current().unwrap_or(0) % self.0.len()
    }

    /// The most recently used idle connection of the calling worker's stack, else of another
    /// worker's; with its use count and home stack.
    pub(crate) fn pop(&self) -> Option<(http1::SendRequest<UpBody>, u32, usize)> {
        let here = self.here();
        let n = self.0.len();
        (0..n).map(|i| (here + i) % n).find_map(|slot| {
            self.lock(slot)
                .conns
                .pop()
                .map(|idle| (idle.sender, idle.uses, slot))
        })
    }

    /// Keeps `sender` for reuse on its `home` stack, unless `max_idle` are kept there already
    /// (it then drops, which closes its connection). Starts that stack's reaper if none runs.
    pub(crate) fn push(
        ep: &Arc<Endpoint>,
        sender: http1::SendRequest<UpBody>,
        uses: u32,
        home: usize,
        max_idle: usize,
        timeout: Duration,
    ) {
        let slot = home % ep.idle_h1.0.len();
        let mut pool = ep.idle_h1.lock(slot);
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
            tokio::spawn(reap(Arc::downgrade(ep), slot));
        }
    }
}

/// Closes the connections of `ep`'s stack `slot` idle for longer than the timeout; ends when
/// none is left idle there or the endpoint is gone (no snapshot lists it).
async fn reap(ep: Weak<Endpoint>, slot: usize) {
    loop {
        let wake = {
            let Some(ep) = ep.upgrade() else { return };
            let mut pool = ep.idle_h1.lock(slot);
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
