//! Per-cluster circuit breaking with Envoy's HTTP/1 connection-pool semantics, as Istio
//! documents `connectionPool`:
//! - `tcp.maxConnections`: upstream connections of the cluster. An HTTP/1 connection carries
//!   one request at a time, so it also bounds requests in flight; a request that finds them all
//!   busy waits as *pending* (and counts `upstream_cx_overflow`);
//! - `http.http1MaxPendingRequests`: requests allowed to wait; one more is answered 503 at once
//!   with `x-envoy-overloaded: true` (`upstream_rq_pending_overflow`);
//! - `http.maxRequestsPerConnection`: enforced when a connection comes back (`upstream.rs`);
//! - `http.http2MaxRequests` (Envoy's `max_requests`, which Istio applies to HTTP/1.1 too):
//!   requests outstanding to the cluster, counted from the moment a request is given a
//!   connection until its response ends. Checked, as Envoy's pool does, when a request is
//!   attached to a connection; over it the request is answered 503 `x-envoy-overloaded` at
//!   once and counted in `upstream_rq_pending_overflow` (Envoy counts both overflows there);
//! - `http.maxRetries` (Envoy's `max_retries`): retries outstanding to the cluster, from the
//!   moment one is scheduled until its attempt has a result. A retry over it is not made
//!   (`upstream_rq_retry_overflow`) and the client gets the last attempt's answer.
//!
//! Stats live in [`ClusterStats`], one per cluster key for the proxy's lifetime, so config
//! swaps keep counters, gauges and the slot semaphore (when the limit is unchanged).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::outlier::OutlierStats;
use meshpath_model::l7::{ClusterKey, ConnectionPool};

/// Envoy's default for every circuit-breaker threshold Istio leaves unset (2^32 - 1).
const UNLIMITED: u64 = u32::MAX as u64;

/// Counters and gauges of one cluster, named as Envoy's.
#[derive(Debug, Default)]
pub(crate) struct ClusterStats {
    pub upstream_rq_total: AtomicU64,
    pub upstream_rq_pending_total: AtomicU64,
    pub upstream_rq_pending_overflow: AtomicU64,
    pub upstream_rq_pending_active: AtomicU64,
    /// Requests that waited as pending and then failed because the connection they were given
    /// could not be set up (Envoy counts pending requests failed with their connection).
    pub upstream_rq_pending_failure_eject: AtomicU64,
    pub upstream_cx_total: AtomicU64,
    pub upstream_cx_active: AtomicU64,
    pub upstream_cx_overflow: AtomicU64,
    pub upstream_cx_max_requests: AtomicU64,
    pub upstream_cx_idle_timeout: AtomicU64,
    /// Requests attached to a connection whose response has not ended (`max_requests`).
    pub upstream_rq_active: AtomicU64,
    pub upstream_rq_retry: AtomicU64,
    pub upstream_rq_retry_success: AtomicU64,
    pub upstream_rq_retry_overflow: AtomicU64,
    /// Retries scheduled whose attempt has no result yet (`max_retries`; Envoy shows it only
    /// through `remaining_retries`).
    retries_active: AtomicU64,
    /// Current thresholds, for the `circuit_breakers.default.*` gauges.
    max_connections: AtomicU64,
    max_pending: AtomicU64,
    max_requests: AtomicU64,
    max_retries: AtomicU64,
    /// The request-slot semaphore and the limit it was made for.
    slots: Mutex<Option<(u32, Arc<Semaphore>)>>,
    /// `outlierDetection` counters (`outlier.rs`).
    pub outlier: OutlierStats,
}

/// Stats of every cluster the proxy has known, by key.
pub(crate) type StatsMap = BTreeMap<ClusterKey, Arc<ClusterStats>>;

/// The stats of `key`, created on first use.
pub(crate) fn stats_for(map: &mut StatsMap, key: &ClusterKey) -> Arc<ClusterStats> {
    map.entry(key.clone()).or_default().clone()
}

/// An overflowing request: answer 503 `x-envoy-overloaded`.
#[derive(Debug)]
pub(crate) struct Overflow;

/// A cluster's limits, built with each snapshot.
pub(crate) struct Breaker {
    pub stats: Arc<ClusterStats>,
    slots: Option<Arc<Semaphore>>,
    max_pending: u64,
    max_requests: u64,
    max_retries: u64,
}

/// An admitted attempt: its connection slot (HTTP/1 with `maxConnections`) and its place
/// among the cluster's active requests.
pub(crate) struct Admitted {
    pub slot: Option<OwnedSemaphorePermit>,
    pub request: RqGuard,
    /// The attempt waited as a pending request for its slot.
    pub waited: bool,
}

impl Breaker {
    pub(crate) fn new(stats: Arc<ClusterStats>, pool: &ConnectionPool) -> Breaker {
        let limit = |v: Option<u32>| v.map_or(UNLIMITED, u64::from);
        let max_pending = limit(pool.http1_max_pending_requests);
        let max_requests = limit(pool.http2_max_requests);
        let max_retries = limit(pool.max_retries);
        stats
            .max_connections
            .store(limit(pool.max_connections), Ordering::Relaxed);
        stats.max_pending.store(max_pending, Ordering::Relaxed);
        stats.max_requests.store(max_requests, Ordering::Relaxed);
        stats.max_retries.store(max_retries, Ordering::Relaxed);
        let slots = pool.max_connections.map(|n| {
            let mut cur = stats.slots.lock().unwrap_or_else(|p| p.into_inner());
            match &*cur {
                // Same limit: keep the semaphore so permits held by requests in flight on the
                // old snapshot still count.
                Some((m, s)) if *m == n => s.clone(),
                _ => {
                    let s = Arc::new(Semaphore::new(n as usize));
                    *cur = Some((n, s.clone()));
                    s
                }
            }
        });
        Breaker {
            stats,
            slots,
            max_pending,
            max_requests,
            max_retries,
        }
    }

    /// Admission of one upstream attempt. HTTP/1 (`connection_slots`) first needs a slot (held
    /// until its connection is back in the pool or closed), waiting as pending if all are
    /// taken; then, like Envoy attaching a request to a connection, a place among the
    /// cluster's active requests. Either limit overflowing gives [`Overflow`].
    pub(crate) async fn admit(&self, connection_slots: bool) -> Result<Admitted, Overflow> {
        let (slot, waited) = if connection_slots {
            self.slot().await?
        } else {
            (None, false)
        };
        let st = &self.stats;
        let before = st.upstream_rq_active.fetch_add(1, Ordering::Relaxed);
        let request = RqGuard(self.stats.clone());
        if before >= self.max_requests {
            // `request` drops here and takes the count back, `slot` is released.
            st.upstream_rq_pending_overflow
                .fetch_add(1, Ordering::Relaxed);
            return Err(Overflow);
        }
        st.upstream_rq_total.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            slot,
            request,
            waited,
        })
    }

    /// A retry may be made: `Some` while it is outstanding (drop it once its attempt has a
    /// result), `None` over `maxRetries` (counted in `upstream_rq_retry_overflow`).
    pub(crate) fn try_retry(&self) -> Option<RetryGuard> {
        let st = &self.stats;
        let before = st.retries_active.fetch_add(1, Ordering::Relaxed);
        let guard = RetryGuard(self.stats.clone());
        if before >= self.max_retries {
            drop(guard);
            st.upstream_rq_retry_overflow
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        st.upstream_rq_retry.fetch_add(1, Ordering::Relaxed);
        Some(guard)
    }

    /// A pending request's connection could not be set up (`upstream_rq_pending_failure_eject`).
    pub(crate) fn pending_connect_failed(&self) {
        self.stats
            .upstream_rq_pending_failure_eject
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A connection slot (`maxConnections`), after waiting as pending if none is free; with
    /// whether it waited.
    async fn slot(&self) -> Result<(Option<OwnedSemaphorePermit>, bool), Overflow> {
        let st = &self.stats;
        let Some(slots) = &self.slots else {
            return Ok((None, false));
        };
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return Ok((Some(p), false));
        }
        st.upstream_cx_overflow.fetch_add(1, Ordering::Relaxed);
        let before = st
            .upstream_rq_pending_active
            .fetch_add(1, Ordering::Relaxed);
        if before >= self.max_pending {
            st.upstream_rq_pending_active
                .fetch_sub(1, Ordering::Relaxed);
            st.upstream_rq_pending_overflow
                .fetch_add(1, Ordering::Relaxed);
            return Err(Overflow);
        }
        st.upstream_rq_pending_total.fetch_add(1, Ordering::Relaxed);
        // Decrements on drop too: a request cancelled (route timeout, client gone) while
        // pending must not stay counted.
        let _pending = PendingGuard(st);
        let permit = slots.clone().acquire_owned().await.map_err(|_| Overflow)?;
        Ok((Some(permit), true))
    }
}

/// One of the cluster's active requests (`upstream_rq_active`); lives with the response body.
#[derive(Debug)]
pub(crate) struct RqGuard(Arc<ClusterStats>);

impl Drop for RqGuard {
    fn drop(&mut self) {
        self.0.upstream_rq_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One of the cluster's outstanding retries.
pub(crate) struct RetryGuard(Arc<ClusterStats>);

impl RetryGuard {
    /// The retried attempt got an answer that is not retried again (Envoy's
    /// `upstream_rq_retry_success`).
    pub(crate) fn succeeded(self) {
        self.0
            .upstream_rq_retry_success
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.retries_active.fetch_sub(1, Ordering::Relaxed);
    }
}

struct PendingGuard<'a>(&'a ClusterStats);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0
            .upstream_rq_pending_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one open upstream connection of a cluster; lives in the connection's task.
pub(crate) struct CxGuard(Arc<ClusterStats>);

impl CxGuard {
    pub(crate) fn new(stats: Arc<ClusterStats>) -> CxGuard {
        stats.upstream_cx_total.fetch_add(1, Ordering::Relaxed);
        stats.upstream_cx_active.fetch_add(1, Ordering::Relaxed);
        CxGuard(stats)
    }
}

impl Drop for CxGuard {
    fn drop(&mut self) {
        self.0.upstream_cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Istio's name for a cluster: `outbound|<port>|<subset>|<host>`.
pub(crate) fn envoy_cluster_name(key: &ClusterKey) -> String {
    format!(
        "outbound|{}|{}|{}.{}.svc.cluster.local{}",
        key.port,
        key.subset.as_deref().unwrap_or(""),
        key.service.name,
        key.service.namespace,
        meshpath_model::l7::RuleView::suffix(key.view.as_ref())
    )
}

impl ClusterStats {
    /// `(stat, value, is_counter)` in Envoy's names.
    pub(crate) fn values(&self) -> Vec<(&'static str, u64, bool)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (pending, max_pending) = (l(&self.upstream_rq_pending_active), l(&self.max_pending));
        let (cx, max_cx) = (l(&self.upstream_cx_active), l(&self.max_connections));
        let (rq, max_rq) = (l(&self.upstream_rq_active), l(&self.max_requests));
        let (retries, max_retries) = (l(&self.retries_active), l(&self.max_retries));
        let gauge = |name, v| (name, v, false);
        let counter = |name, a: &AtomicU64| (name, l(a), true);
        let mut v = vec![
            (
                "circuit_breakers.default.cx_open",
                u64::from(cx >= max_cx),
                false,
            ),
            (
                "circuit_breakers.default.remaining_cx",
                max_cx.saturating_sub(cx),
                false,
            ),
            (
                "circuit_breakers.default.remaining_pending",
                max_pending.saturating_sub(pending),
                false,
            ),
            (
                "circuit_breakers.default.rq_pending_open",
                u64::from(pending >= max_pending),
                false,
            ),
            // Istio sets no high-priority thresholds and meshpath gives every request the
            // default priority: no request is ever pending at high priority, so its breaker
            // (Envoy's default 1024 pending) never opens.
            gauge("circuit_breakers.high.rq_pending_open", 0),
            gauge(
                "circuit_breakers.default.remaining_rq",
                max_rq.saturating_sub(rq),
            ),
            gauge(
                "circuit_breakers.default.remaining_retries",
                max_retries.saturating_sub(retries),
            ),
            gauge("circuit_breakers.default.rq_open", u64::from(rq >= max_rq)),
            gauge(
                "circuit_breakers.default.rq_retry_open",
                u64::from(retries >= max_retries),
            ),
            gauge("upstream_rq_active", rq),
            counter("upstream_cx_idle_timeout", &self.upstream_cx_idle_timeout),
            counter("upstream_rq_retry", &self.upstream_rq_retry),
            counter(
                "upstream_rq_retry_overflow",
                &self.upstream_rq_retry_overflow,
            ),
            counter("upstream_rq_retry_success", &self.upstream_rq_retry_success),
            ("upstream_cx_active", cx, false),
            (
                "upstream_cx_max_requests",
                l(&self.upstream_cx_max_requests),
                true,
            ),
            ("upstream_cx_overflow", l(&self.upstream_cx_overflow), true),
            ("upstream_cx_total", l(&self.upstream_cx_total), true),
            ("upstream_rq_pending_active", pending, false),
            counter(
                "upstream_rq_pending_failure_eject",
                &self.upstream_rq_pending_failure_eject,
            ),
            (
                "upstream_rq_pending_overflow",
                l(&self.upstream_rq_pending_overflow),
                true,
            ),
            (
                "upstream_rq_pending_total",
                l(&self.upstream_rq_pending_total),
                true,
            ),
            ("upstream_rq_total", l(&self.upstream_rq_total), true),
        ];
        v.extend(self.outlier.values());
        v.sort_by_key(|(name, _, _)| *name);
        v
    }
}

/// Envoy's `/stats` text: `cluster.<name>.<stat>: <value>`, one per line, sorted.
pub(crate) fn render_envoy(map: &StatsMap) -> String {
    let mut out = String::new();
    for (key, st) in map {
        let name = envoy_cluster_name(key);
        for (stat, v, _) in st.values() {
            let _ = writeln!(out, "cluster.{name}.{stat}: {v}");
        }
    }
    out
}
