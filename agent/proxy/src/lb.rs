//! Choosing an endpoint inside a cluster (`TrafficPolicy.load_balancer`).
//!
//! Retries avoid the endpoints already tried (Istio's `previous_hosts` predicate, up to
//! `HOST_SELECTION_ATTEMPTS` picks) except under consistent hashing, where Istio keeps the key's
//! endpoint. Endpoints ejected by `outlierDetection` are skipped by every policy, and
//! `localityLbSetting` narrows the endpoints to a priority level or locality first
//! (`locality.rs`); both go through `pick_among`. Round robin and least request draw by
//! slow-start weight while an endpoint warms (`warmup.rs`), on every path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::hash::{Maglev, Ring};
use super::snapshot::ClusterRt;
use meshpath_model::l7::{HashAlgorithm, LoadBalancer};

/// Istio's `HostSelectionRetryMaxAttempts`.
const HOST_SELECTION_ATTEMPTS: usize = 5;

#[derive(Debug)]
pub(crate) enum LbState {
    RoundRobin(AtomicUsize),
    LeastRequest,
    Random,
    /// To the connection's original destination; no endpoint list is consulted.
    Passthrough,
    Ring(Ring),
    Maglev(Maglev),
}

impl LbState {
    pub(crate) fn build(lb: &LoadBalancer, addrs: &[SocketAddr]) -> LbState {
        match lb {
            // A random start keeps the proxies of all nodes from hitting the same first endpoint.
            LoadBalancer::RoundRobin => LbState::RoundRobin(AtomicUsize::new(fastrand::usize(..))),
            LoadBalancer::LeastRequest => LbState::LeastRequest,
            LoadBalancer::Random => LbState::Random,
            LoadBalancer::Passthrough => LbState::Passthrough,
            LoadBalancer::ConsistentHash { algorithm, .. } => match algorithm {
                HashAlgorithm::RingHash { minimum_ring_size } => {
                    LbState::Ring(Ring::build(addrs, *minimum_ring_size))
                }
                HashAlgorithm::Maglev { table_size } => {
                    LbState::Maglev(Maglev::build(addrs, *table_size))
                }
            },
        }
    }
}

/// The index of the endpoint to use, `None` when the cluster has none (or is passthrough).
/// `hash` is the request's consistent-hash key, if the policy has one and the request carries it.
pub(crate) fn pick(cluster: &ClusterRt, hash: Option<u64>, tried: &[usize]) -> Option<usize> {
    let n = cluster.endpoints.len();
    if n == 0 {
        return None;
    }
    let addrs = || cluster.endpoints.iter().map(|e| e.addr);
    if let Some(locality) = &cluster.locality {
        let ejected = cluster.outlier.as_ref().and_then(|o| o.ejected(addrs()));
        let allowed = locality.allowed(ejected.as_deref(), n)?;
        return pick_among(cluster, hash, tried, &allowed);
    }
    let ejected = cluster
        .outlier
        .as_ref()
        .and_then(|o| o.ejected_mask(addrs()));
    if let Some(mask) = ejected {
        let healthy: Vec<bool> = mask.iter().map(|e| !e).collect();
        return pick_among(cluster, hash, tried, &healthy);
    }
    if n == 1 {
        return (!matches!(cluster.lb, LbState::Passthrough)).then_some(0);
    }
    if let (LbState::RoundRobin(_) | LbState::LeastRequest, Some(slow)) =
        (&cluster.lb, &cluster.slow_start)
    {
        if let Some(i) = slow.pick(tried, std::time::Instant::now()) {
            return Some(i);
        }
    }
    match &cluster.lb {
        LbState::Passthrough => None,
        LbState::RoundRobin(next) => {
            let mut i = next.fetch_add(1, Ordering::Relaxed) % n;
            for _ in 0..n.min(HOST_SELECTION_ATTEMPTS) {
                if !tried.contains(&i) {
                    break;
                }
                i = next.fetch_add(1, Ordering::Relaxed) % n;
            }
            Some(i)
        }
        LbState::Random => Some(avoiding(tried, || fastrand::usize(..n))),
        LbState::LeastRequest => Some(avoiding(tried, || least_of_two(cluster, n))),
        LbState::Ring(ring) => hash
            .and_then(|h| ring.lookup(h))
            .or_else(|| Some(fastrand::usize(..n))),
        LbState::Maglev(table) => hash
            .and_then(|h| table.lookup(h))
            .or_else(|| Some(fastrand::usize(..n))),
    }
}

/// [`pick`] over the `allowed` endpoints only (not ejected by `outlierDetection`, in the
/// locality level drawn): the same policies, preferring those not tried yet, slow start
/// included. A hash that lands outside moves to the next allowed endpoint in list order, so
/// keys of allowed endpoints keep theirs. `None` when none is allowed (Envoy: "no healthy
/// upstream").
fn pick_among(
    cluster: &ClusterRt,
    hash: Option<u64>,
    tried: &[usize],
    allowed: &[bool],
) -> Option<usize> {
    let n = allowed.len();
    let healthy: Vec<usize> = (0..n).filter(|i| allowed[*i]).collect();
    let fresh: Vec<usize> = healthy
        .iter()
        .copied()
        .filter(|i| !tried.contains(i))
        .collect();
    let c = if fresh.is_empty() { &healthy } else { &fresh };
    if c.is_empty() {
        return None;
    }
    let load = |i: usize| cluster.endpoints[i].active.load(Ordering::Relaxed);
    let hashed = |i: Option<usize>| {
        let start = i.unwrap_or_else(|| fastrand::usize(..n));
        (0..n).map(|k| (start + k) % n).find(|i| allowed[*i])
    };
    if let (LbState::RoundRobin(_) | LbState::LeastRequest, Some(slow)) =
        (&cluster.lb, &cluster.slow_start)
    {
        if let Some(i) = slow.pick_from(c, std::time::Instant::now()) {
            return Some(i);
        }
    }
    match &cluster.lb {
        LbState::Passthrough => None,
        LbState::RoundRobin(next) => Some(c[next.fetch_add(1, Ordering::Relaxed) % c.len()]),
        LbState::Random => Some(c[fastrand::usize(..c.len())]),
        LbState::LeastRequest => {
            let (a, b) = (c[fastrand::usize(..c.len())], c[fastrand::usize(..c.len())]);
            Some(if load(b) < load(a) { b } else { a })
        }
        LbState::Ring(ring) => hashed(hash.and_then(|h| ring.lookup(h))),
        LbState::Maglev(table) => hashed(hash.and_then(|h| table.lookup(h))),
    }
}

fn avoiding(tried: &[usize], mut choose: impl FnMut() -> usize) -> usize {
    let mut i = choose();
    for _ in 1..HOST_SELECTION_ATTEMPTS {
        if !tried.contains(&i) {
            break;
        }
        i = choose();
    }
    i
}

/// Power of two choices over in-flight requests (Envoy's least request with equal weights).
fn least_of_two(cluster: &ClusterRt, n: usize) -> usize {
    let a = fastrand::usize(..n);
    let mut b = fastrand::usize(..n - 1);
    if b >= a {
        b += 1;
    }
    let load = |i: usize| cluster.endpoints[i].active.load(Ordering::Relaxed);
    if load(b) < load(a) {
        b
    } else {
        a
    }
}
