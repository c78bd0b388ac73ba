//! An endpoint's idle HTTP/1 connections, closed after the cluster's `idleTimeout` (Envoy's
//! `common_http_protocol_options.idle_timeout`; Istio's default is one hour).
//!
//! Connections are kept as a stack (the most recently used is reused first, as Envoy does),
//! so the oldest idle ones sit at the bottom. One reaper task per endpoint runs while it has
//! idle connections: it closes every expired one, and every one its peer closed (nothing polls
//! an idle connection, so it looks at least once per [`SWEEP`]; a check-out looks too). The
//! hot path (give back, check out) pays a lock and a clock read, never a spawned task.
//!
//! Each proxy worker thread has its own stack (`workers`): an upstream connection's socket is
//! registered with the runtime of the worker that opened it (its home), and a request that
//! reuses one of its own thread's wakes no other thread. A worker with none idle takes another worker's before it opens a new
//! one (a cluster's `maxConnections` counts them all), and gives it back to its home's stack.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use super::h1::Conn;
use super::upstream::Endpoint;
use super::workers;

/// Istio's default `idleTimeout`.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How often the reaper looks for idle connections their peer closed.
pub(crate) const SWEEP: Duration = Duration::from_secs(1);

struct Idle {
    conn: Conn,
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
    /// worker's.
    pub(crate) fn pop(&self) -> Option<Conn> {
        let here = self.here();
        let n = self.0.len();
        (0..n)
            .map(|i| (here + i) % n)
            .find_map(|slot| self.lock(slot).conns.pop().map(|idle| idle.conn))
    }

    /// Keeps `conn` for reuse on its home stack, unless `max_idle` are kept there already
    /// (it then drops, which closes it). Starts that stack's reaper if none runs.
    pub(crate) fn push(ep: &Arc<Endpoint>, conn: Conn, max_idle: usize, timeout: Duration) {
        let slot = conn.home % ep.idle_h1.0.len();
        let mut pool = ep.idle_h1.lock(slot);
        if pool.conns.len() >= max_idle {
            return;
        }
        let since = Instant::now();
        pool.timeout = timeout;
        pool.conns.push(Idle { conn, since });
        if !pool.reaper {
            pool.reaper = true;
            tokio::spawn(reap(Arc::downgrade(ep), slot));
        }
    }
}

/// Closes the connections of `ep`'s stack `slot` idle for longer than the timeout or closed by
/// their peer; ends when none is left idle there or the endpoint is gone (no snapshot lists it).
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
                pool.conns.drain(..expired);
                if let Some(st) = ep.stats() {
                    st.upstream_cx_idle_timeout
                        .fetch_add(expired as u64, Ordering::Relaxed);
                }
                debug!(endpoint = %ep.addr, closed = expired, "idle upstream connections timed out");
            }
            let before = pool.conns.len();
            pool.conns.retain_mut(|c| c.conn.is_usable());
            if pool.conns.len() < before {
                debug!(endpoint = %ep.addr, closed = before - pool.conns.len(),
                    "idle upstream connections closed by their peer");
            }
            if pool.conns.is_empty() {
                pool.reaper = false;
                return;
            }
            // The bottom one's expiry, or the next sweep if sooner (`0s`: no expiry).
            let sweep = now + SWEEP;
            pool.conns[0]
                .since
                .checked_add(timeout)
                .map_or(sweep, |t| t.min(sweep))
        };
        tokio::time::sleep_until(wake).await;
    }
}
