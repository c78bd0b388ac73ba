//! An endpoint's shared HTTP/2 connection and its `idleTimeout` (Envoy closes an upstream
//! HTTP/2 connection that has carried no stream for that long, as it closes idle HTTP/1 ones).
//!
//! The connection is idle when no request to the endpoint is in flight and none started for
//! the timeout. A reaper task per connection sleeps until the last use plus the timeout, then
//! either closes it (drops the shared sender: hyper ends the connection once its streams are
//! done) or sleeps again. The hot path pays a lock and a clock read.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use hyper::client::conn::http2;
use tokio::time::Instant;
use tracing::debug;

use super::body::UpBody;
use super::upstream::Endpoint;

struct Shared {
    sender: http2::SendRequest<UpBody>,
    last_used: Instant,
    /// Tells this connection from a later one in the same slot (its reaper's own).
    id: u64,
}

#[derive(Default)]
struct Inner {
    conn: Option<Shared>,
    next_id: u64,
}

#[derive(Default)]
pub(crate) struct H2Slot(Mutex<Inner>);

impl std::fmt::Debug for H2Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Slot")
            .field("open", &self.lock().conn.is_some())
            .finish()
    }
}

impl H2Slot {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shared connection for one more request, if it is still open.
    pub(crate) fn checkout(&self) -> Option<http2::SendRequest<UpBody>> {
        let mut inner = self.lock();
        let conn = inner.conn.as_mut().filter(|c| !c.sender.is_closed())?;
        conn.last_used = Instant::now();
        Some(conn.sender.clone())
    }

    /// Shares `sender` from now on and, unless `timeout` is beyond the clock (`0s`: none),
    /// starts its reaper.
    pub(crate) fn install(
        ep: &Arc<Endpoint>,
        sender: http2::SendRequest<UpBody>,
        timeout: Duration,
    ) {
        let now = Instant::now();
        let mut inner = ep.h2.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.conn = Some(Shared {
            sender,
            last_used: now,
            id,
        });
        if now.checked_add(timeout).is_some() {
            tokio::spawn(reap(Arc::downgrade(ep), id, timeout));
        }
    }
}

/// Closes connection `id` of `ep` once it has been idle for `timeout`; ends when it is
/// closed, replaced, or the endpoint is gone (no snapshot lists it).
async fn reap(ep: Weak<Endpoint>, id: u64, timeout: Duration) {
    let mut wake = Instant::now() + timeout;
    loop {
        tokio::time::sleep_until(wake).await;
        let Some(ep) = ep.upgrade() else { return };
        let mut inner = ep.h2.lock();
        let Some(conn) = inner.conn.as_ref().filter(|c| c.id == id) else {
            return;
        };
        if conn.sender.is_closed() {
            inner.conn = None;
            return;
        }
        let due = conn.last_used + timeout;
        let now = Instant::now();
        if due > now {
            wake = due;
            continue;
        }
        if ep.active.load(Ordering::Relaxed) > 0 {
            // A stream (a long response) is still open: look again a timeout later.
            wake = now + timeout;
            continue;
        }
        inner.conn = None;
        drop(inner);
        if let Some(st) = ep.stats() {
            st.upstream_cx_idle_timeout.fetch_add(1, Ordering::Relaxed);
        }
        debug!(endpoint = %ep.addr, "idle upstream HTTP/2 connection timed out");
        return;
    }
}
