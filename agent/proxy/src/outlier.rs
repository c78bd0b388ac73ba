//! DestinationRule `outlierDetection`, with the semantics of Envoy's consecutive-error
//! detectors (what Istio configures):
//! - every upstream result of a cluster with outlier detection is recorded per endpoint:
//!   500-599 counts towards `consecutive5xxErrors`, 502/503/504 also towards
//!   `consecutiveGatewayErrors`; a connect failure or reset counts as a 503 and a per-try
//!   timeout as a 504 (Envoy without `split_external_local_origin_errors`); anything else
//!   resets both counts, a non-gateway 5xx resets the gateway count;
//! - reaching a threshold ejects the endpoint at once (as Envoy does for consecutive errors),
//!   for `baseEjectionTime` × the number of times it was ejected; that multiplier decays by
//!   one per `interval` the endpoint spends un-ejected (Envoy's sweep does the same);
//! - `maxEjectionPercent` caps ejected endpoints at `floor(n × pct / 100)`, but one endpoint
//!   can always be ejected (Envoy: "will eject at least one host regardless of the value");
//! - `minHealthPercent`: when fewer endpoints than that are un-ejected, balancers ignore
//!   ejections (Envoy's panic threshold, which Istio maps it to).
//!
//! - an ejected endpoint returns at the first `interval` tick after its ejection time is up,
//!   as in Envoy, whose detector sweeps each cluster every `interval`. The ticks keep the
//!   phase of the cluster's first recorded result; a sweep task runs only while the cluster
//!   has ejected endpoints.
//!
//! State is keyed by cluster and endpoint address and lives as long as the proxy, so config
//! swaps keep it. The union of ejected addresses is published on a `watch` channel for the
//! agent, which also removes those endpoints from the kernel's selection.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::info;

use super::breaker::{envoy_cluster_name, ClusterStats};
use meshpath_model::l7::{ClusterKey, OutlierDetection};

/// The set of ejected endpoint addresses, over all clusters.
pub type EjectedSet = Arc<BTreeSet<SocketAddr>>;

/// Envoy's `outlier_detection.*` stats of one cluster.
#[derive(Debug, Default)]
pub(crate) struct OutlierStats {
    ejections_active: AtomicU64,
    ejections_total: AtomicU64,
    ejections_enforced_total: AtomicU64,
    ejections_enforced_consecutive_5xx: AtomicU64,
    ejections_enforced_consecutive_gateway_failure: AtomicU64,
    ejections_overflow: AtomicU64,
}

impl OutlierStats {
    /// `(stat, value, is_counter)` in Envoy's names.
    pub(crate) fn values(&self) -> [(&'static str, u64, bool); 6] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            (
                "outlier_detection.ejections_active",
                l(&self.ejections_active),
                false,
            ),
            (
                "outlier_detection.ejections_enforced_consecutive_5xx",
                l(&self.ejections_enforced_consecutive_5xx),
                true,
            ),
            (
                "outlier_detection.ejections_enforced_consecutive_gateway_failure",
                l(&self.ejections_enforced_consecutive_gateway_failure),
                true,
            ),
            (
                "outlier_detection.ejections_enforced_total",
                l(&self.ejections_enforced_total),
                true,
            ),
            (
                "outlier_detection.ejections_overflow",
                l(&self.ejections_overflow),
                true,
            ),
            (
                "outlier_detection.ejections_total",
                l(&self.ejections_total),
                true,
            ),
        ]
    }
}

/// One endpoint's record.
#[derive(Debug, Default)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// Set while ejected.
    ejected_until: Option<Instant>,
    /// Envoy's `num_ejections`, the ejection-time multiplier.
    times_ejected: u32,
    /// When it last came back, for the multiplier's decay.
    returned_at: Option<Instant>,
}

/// The result of one upstream attempt, as the detector sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Attempt {
    Status(u16),
    /// Connect failure or reset before a response: Envoy counts it as a 503.
    Failed,
    /// Per-try timeout: Envoy counts it as a 504.
    TimedOut,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Consecutive5xx,
    ConsecutiveGateway,
}

/// Shortest sweep period, for an `interval` of 0 (Istio rejects that; a test may not).
const MIN_TICK: Duration = Duration::from_millis(1);

/// One cluster's hosts and its interval timer.
struct ClusterState {
    hosts: HashMap<SocketAddr, Host>,
    /// Ticks fall at `anchor + k × interval`.
    anchor: Instant,
    /// The `interval` of the latest snapshot that recorded a result.
    interval: Duration,
    /// A sweep task runs (only while some host is ejected).
    sweeping: bool,
}

/// One cluster's detector state, `None` until its first recorded result (the interval timer's
/// phase starts there). Each cluster has its own lock, so recording a result never waits on
/// another cluster's traffic; it lives as long as the proxy, so config swaps keep it.
#[derive(Default)]
struct Cell(Mutex<Option<ClusterState>>);

impl Cell {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ClusterState>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ejection state of every cluster, shared by all snapshots.
pub(crate) struct Outliers {
    /// Taken when a snapshot is built and to publish the ejected set (only when an endpoint is
    /// ejected or returns), never to record a result. Lock order: this, then a [`Cell`].
    cells: Mutex<HashMap<ClusterKey, Arc<Cell>>>,
    tx: watch::Sender<EjectedSet>,
}

impl Outliers {
    pub(crate) fn new() -> Arc<Outliers> {
        Arc::new(Outliers {
            cells: Mutex::default(),
            tx: watch::channel(EjectedSet::default()).0,
        })
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<EjectedSet> {
        self.tx.subscribe()
    }

    fn cells(&self) -> std::sync::MutexGuard<'_, HashMap<ClusterKey, Arc<Cell>>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-publishes the ejected set, only when it changed (the agent rewrites maps on change).
    /// The map lock is held throughout, so two publications cannot overtake each other.
    /// Callers hold no [`Cell`] lock.
    fn publish(&self) {
        let cells = self.cells();
        let mut set = BTreeSet::new();
        for cell in cells.values() {
            if let Some(c) = &*cell.lock() {
                set.extend(
                    c.hosts
                        .iter()
                        .filter(|(_, h)| h.ejected_until.is_some())
                        .map(|(a, _)| *a),
                );
            }
        }
        self.tx.send_if_modified(|cur| {
            let changed = **cur != set;
            if changed {
                *cur = Arc::new(set);
            }
            changed
        });
    }
}

/// A cluster's detector, built with each snapshot for clusters that have `outlierDetection`.
pub(crate) struct OutlierRt {
    pub key: ClusterKey,
    pub policy: OutlierDetection,
    pub stats: Arc<ClusterStats>,
    all: Arc<Outliers>,
    /// This cluster's state, looked up once per snapshot rather than per result.
    cell: Arc<Cell>,
}

impl OutlierRt {
    pub(crate) fn new(
        key: ClusterKey,
        policy: OutlierDetection,
        stats: Arc<ClusterStats>,
        all: &Arc<Outliers>,
    ) -> OutlierRt {
        let cell = all.cells().entry(key.clone()).or_default().clone();
        OutlierRt {
            key,
            policy,
            stats,
            all: all.clone(),
            cell,
        }
    }

    /// Records one attempt's result on `addr`; `n` is the cluster's endpoint count.
    pub(crate) fn record(&self, addr: SocketAddr, result: Attempt, n: usize) {
        if self.eject(addr, result, n) {
            self.all.publish();
        }
    }

    /// [`record`](Self::record) under the cluster's lock: whether `addr` was ejected.
    fn eject(&self, addr: SocketAddr, result: Attempt, n: usize) -> bool {
        let status = match result {
            Attempt::Status(s) => s,
            Attempt::Failed => 503,
            Attempt::TimedOut => 504,
        };
        let p = &self.policy;
        let mut state = self.cell.lock();
        let cluster = state.get_or_insert_with(|| ClusterState {
            hosts: HashMap::new(),
            anchor: Instant::now(),
            interval: p.interval,
            sweeping: false,
        });
        cluster.interval = p.interval;
        let host = cluster.hosts.entry(addr).or_default();
        if !(500..600).contains(&status) {
            host.consecutive_5xx = 0;
            host.consecutive_gateway = 0;
            return false;
        }
        host.consecutive_5xx += 1;
        if matches!(status, 502..=504) {
            host.consecutive_gateway += 1;
        } else {
            host.consecutive_gateway = 0;
        }
        // Results of requests that were in flight when the endpoint was ejected change nothing.
        if host.ejected_until.is_some() {
            return false;
        }
        let kind = if p
            .consecutive_gateway_errors
            .is_some_and(|t| host.consecutive_gateway >= t)
        {
            Kind::ConsecutiveGateway
        } else if p
            .consecutive_5xx_errors
            .is_some_and(|t| host.consecutive_5xx >= t)
        {
            Kind::Consecutive5xx
        } else {
            return false;
        };
        // Envoy resets the count that fired, so the next ejection needs a new run of errors.
        host.consecutive_5xx = 0;
        host.consecutive_gateway = 0;
        let st = &self.stats.outlier;
        st.ejections_total.fetch_add(1, Ordering::Relaxed);
        let active = st.ejections_active.load(Ordering::Relaxed);
        let max = (n as u64 * u64::from(p.max_ejection_percent)) / 100;
        if active > 0 && active >= max {
            st.ejections_overflow.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let now = Instant::now();
        // The multiplier decays by one per interval spent back in the cluster.
        if let (Some(back), false) = (host.returned_at, p.interval.is_zero()) {
            let decay = (now - back).as_nanos() / p.interval.as_nanos();
            host.times_ejected = host
                .times_ejected
                .saturating_sub(decay.min(u32::MAX as u128) as u32);
        }
        host.times_ejected += 1;
        let duration = p.base_ejection_time.saturating_mul(host.times_ejected);
        host.ejected_until = Some(now + duration);
        st.ejections_active.fetch_add(1, Ordering::Relaxed);
        st.ejections_enforced_total.fetch_add(1, Ordering::Relaxed);
        match kind {
            Kind::Consecutive5xx => &st.ejections_enforced_consecutive_5xx,
            Kind::ConsecutiveGateway => &st.ejections_enforced_consecutive_gateway_failure,
        }
        .fetch_add(1, Ordering::Relaxed);
        info!(cluster = %envoy_cluster_name(&self.key), endpoint = %addr, kind = ?kind, ejection_ms = duration.as_millis() as u64, times = host.times_ejected, "endpoint ejected");
        if !cluster.sweeping {
            cluster.sweeping = true;
            let sweep = sweep(
                self.key.clone(),
                self.cell.clone(),
                self.all.clone(),
                self.stats.clone(),
            );
            tokio::spawn(sweep);
        }
        true
    }

    /// Which of `addrs` balancers must skip, `None` when none (the common case, lock-free)
    /// or when so few are left that `minHealthPercent` turns detection off.
    pub(crate) fn ejected_mask(
        &self,
        addrs: impl ExactSizeIterator<Item = SocketAddr>,
    ) -> Option<Vec<bool>> {
        let n = addrs.len();
        let mask = self.ejected(addrs)?;
        let healthy = mask.iter().filter(|e| !**e).count();
        if healthy * 100 < n * self.policy.min_health_percent as usize {
            return None;
        }
        Some(mask)
    }

    /// Which of `addrs` are ejected, `None` when none is; `minHealthPercent` not applied
    /// (locality levels apply it per level).
    pub(crate) fn ejected(
        &self,
        addrs: impl ExactSizeIterator<Item = SocketAddr>,
    ) -> Option<Vec<bool>> {
        if self.stats.outlier.ejections_active.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let state = self.cell.lock();
        let hosts = &state.as_ref()?.hosts;
        let mask: Vec<bool> = addrs
            .map(|a| hosts.get(&a).is_some_and(|h| h.ejected_until.is_some()))
            .collect();
        mask.contains(&true).then_some(mask)
    }
}

/// The cluster's interval timer while it has ejected hosts: at each tick, every host whose
/// ejection time is up returns (Envoy's `checkHostForUneject`).
async fn sweep(key: ClusterKey, cell: Arc<Cell>, all: Arc<Outliers>, stats: Arc<ClusterStats>) {
    loop {
        let tick = {
            let state = cell.lock();
            let Some(c) = &*state else { return };
            next_tick(c.anchor, c.interval.max(MIN_TICK), Instant::now())
        };
        tokio::time::sleep_until(tick).await;
        let (returned, done) = {
            let mut state = cell.lock();
            let Some(c) = &mut *state else { return };
            let now = Instant::now();
            let mut returned = 0;
            for (addr, host) in c.hosts.iter_mut() {
                if host.ejected_until.is_some_and(|t| t <= now) {
                    host.ejected_until = None;
                    host.returned_at = Some(now);
                    returned += 1;
                    info!(cluster = %envoy_cluster_name(&key), endpoint = %addr, "endpoint returned from ejection");
                }
            }
            let done = !c.hosts.values().any(|h| h.ejected_until.is_some());
            if done {
                c.sweeping = false;
            }
            if returned > 0 {
                stats
                    .outlier
                    .ejections_active
                    .fetch_sub(returned, Ordering::Relaxed);
            }
            (returned, done)
        };
        if returned > 0 {
            all.publish();
        }
        if done {
            return;
        }
    }
}

/// The first tick `anchor + k × interval` (k ≥ 1) strictly after `now`.
fn next_tick(anchor: Instant, interval: Duration, now: Instant) -> Instant {
    let k = now.saturating_duration_since(anchor).as_nanos() / interval.as_nanos() + 1;
    let offset = interval.as_nanos().saturating_mul(k).min(u64::MAX as u128) as u64;
    anchor + Duration::from_nanos(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_keep_the_phase_of_the_anchor() {
        let anchor = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(next_tick(anchor, ms(100), anchor), anchor + ms(100));
        assert_eq!(
            next_tick(anchor, ms(100), anchor + ms(250)),
            anchor + ms(300)
        );
        assert_eq!(
            next_tick(anchor, ms(100), anchor + ms(300)),
            anchor + ms(400)
        );
    }
}
