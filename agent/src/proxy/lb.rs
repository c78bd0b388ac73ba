//! Choosing an endpoint inside a cluster (`TrafficPolicy.load_balancer`).
//!
//! Retries avoid the endpoints already tried (Istio's `previous_hosts` predicate, up to
//! `HOST_SELECTION_ATTEMPTS` picks) except under consistent hashing, where Istio keeps the key's
//! endpoint.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::hash::{Maglev, Ring};
use super::snapshot::ClusterRt;
use crate::l7::{HashAlgorithm, LoadBalancer};

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
    if n == 1 {
        return (!matches!(cluster.lb, LbState::Passthrough)).then_some(0);
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
