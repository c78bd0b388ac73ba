//! Balancing: the endpoint for one attempt, by the cluster's `loadBalancer` policy (`lb.rs`),
//! skipping endpoints `outlierDetection` ejected and, on retries, those already tried. A
//! passthrough target is its one endpoint. No endpoint left: 503 "no healthy upstream".

use std::sync::Arc;

use tracing::debug;

use super::super::forward::Target;
use super::super::idle::DEFAULT_IDLE_TIMEOUT;
use super::super::lb;
use super::super::snapshot::cluster_name;
use super::super::upstream::{Endpoint, Proto, SendOpts};
use super::Reply;

/// The endpoint chosen for an attempt and how to send to it.
pub(crate) struct Picked<'t> {
    pub ep: Arc<Endpoint>,
    /// Its index in the cluster (for the retry layer's list of tried endpoints).
    pub idx: usize,
    pub opts: SendOpts,
    /// The cluster's endpoints: idle connections there may be closed to stay within
    /// `maxConnections` when this attempt opens one.
    pub siblings: &'t [Arc<Endpoint>],
}

/// `hash` is the request's consistent-hash key (when the policy has one and the request
/// carries it), `tried` the indices of endpoints earlier attempts used.
pub(crate) fn pick<'t>(
    target: &'t Target,
    hash: Option<u64>,
    tried: &[usize],
    proto: Proto,
    max_idle: usize,
) -> Result<Picked<'t>, Reply> {
    match target {
        Target::Passthrough(ep, connect_timeout) => Ok(Picked {
            ep: ep.clone(),
            idx: 0,
            opts: SendOpts {
                proto,
                connect_timeout: *connect_timeout,
                max_idle,
                max_requests_per_connection: 0,
                max_connections: u32::MAX,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
            },
            siblings: &[],
        }),
        Target::Cluster(c) => match lb::pick(c, hash, tried) {
            Some(i) => Ok(Picked {
                ep: c.endpoints[i].clone(),
                idx: i,
                opts: c.send_opts(proto, max_idle),
                siblings: &c.endpoints,
            }),
            None => {
                debug!(cluster = %cluster_name(&c.key), "no healthy upstream");
                Err(Reply::NoHealthyUpstream)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::super::super::outlier::Attempt;
    use super::super::super::tests::cluster;
    use super::super::testing::cluster_rt;
    use super::*;
    use meshpath_model::l7::{
        ConnectionPool, HashAlgorithm, HashKey, LoadBalancer, OutlierDetection, TrafficPolicy,
    };

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 20_000 + i)))
            .collect()
    }

    fn target(n: u16, lb: LoadBalancer) -> Target {
        Target::Cluster(cluster_rt(cluster(&addrs(n), lb)).0)
    }

    fn idx(t: &Target, hash: Option<u64>, tried: &[usize]) -> usize {
        pick(t, hash, tried, Proto::Http1, 8).expect("picked").idx
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let t = target(4, LoadBalancer::RoundRobin);
        let first = idx(&t, None, &[]);
        for k in 1..12 {
            assert_eq!(idx(&t, None, &[]), (first + k) % 4);
        }
    }

    #[test]
    fn retries_avoid_tried_endpoints() {
        let rr = target(3, LoadBalancer::RoundRobin);
        for _ in 0..30 {
            assert_eq!(idx(&rr, None, &[0, 1]), 2);
        }
        let random = target(2, LoadBalancer::Random);
        // Up to five draws avoid the tried one: each pick misses it with 1 - 2^-5.
        let fresh = (0..1000).filter(|_| idx(&random, None, &[0]) == 1).count();
        assert!(fresh > 900, "{fresh} of 1000 avoided the tried endpoint");
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let t = target(2, LoadBalancer::LeastRequest);
        let Target::Cluster(c) = &t else {
            unreachable!()
        };
        c.endpoints[0].active.store(10, Ordering::Relaxed);
        assert!((0..100).all(|_| idx(&t, None, &[]) == 1));
    }

    #[test]
    fn consistent_hash_keeps_a_key_on_its_endpoint() {
        for algorithm in [
            HashAlgorithm::RingHash {
                minimum_ring_size: 1024,
            },
            HashAlgorithm::Maglev { table_size: 65537 },
        ] {
            let t = target(
                5,
                LoadBalancer::ConsistentHash {
                    key: HashKey::SourceIp,
                    algorithm,
                },
            );
            for h in [1u64, 42, 0xdead_beef, u64::MAX] {
                let first = idx(&t, Some(h), &[]);
                // Retries keep the key's endpoint too (Istio's behaviour under hashing).
                assert!((0..20).all(|_| idx(&t, Some(h), &[first]) == first));
            }
            let spread: std::collections::BTreeSet<usize> = (0..200u64)
                .map(|h| idx(&t, Some(h.wrapping_mul(0x9e37_79b9_7f4a_7c15)), &[]))
                .collect();
            assert!(spread.len() > 1, "keys spread over endpoints");
        }
    }

    #[tokio::test]
    async fn ejected_endpoints_are_skipped_until_none_is_left() {
        let mut c = cluster(&addrs(2), LoadBalancer::RoundRobin);
        c.policy.outlier_detection = Some(OutlierDetection {
            consecutive_5xx_errors: Some(1),
            interval: Duration::from_secs(60),
            base_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        });
        let (rt, _outliers) = cluster_rt(c);
        let od = rt.outlier.as_ref().expect("detector");
        od.record(rt.endpoints[0].addr, Attempt::Status(500), 2);
        let t = Target::Cluster(rt.clone());
        assert!((0..20).all(|_| idx(&t, None, &[]) == 1));
        od.record(rt.endpoints[1].addr, Attempt::Status(500), 2);
        let refused = pick(&t, None, &[], Proto::Http1, 8).err();
        assert_eq!(refused, Some(Reply::NoHealthyUpstream));
        assert_eq!(refused.unwrap().response().status(), 503);
    }

    #[test]
    fn an_empty_cluster_has_no_healthy_upstream() {
        let t = target(0, LoadBalancer::RoundRobin);
        assert_eq!(
            pick(&t, None, &[], Proto::Http1, 8).err(),
            Some(Reply::NoHealthyUpstream)
        );
    }

    #[test]
    fn send_options_follow_the_cluster_policy() {
        let mut c = cluster(&addrs(1), LoadBalancer::RoundRobin);
        c.policy = TrafficPolicy {
            connection_pool: ConnectionPool {
                max_connections: Some(7),
                max_requests_per_connection: Some(3),
                connect_timeout: Some(Duration::from_millis(250)),
                ..ConnectionPool::default()
            },
            ..c.policy
        };
        let t = Target::Cluster(cluster_rt(c).0);
        let p = pick(&t, None, &[], Proto::Http2, 5).unwrap();
        assert_eq!(p.opts.proto, Proto::Http2);
        assert_eq!(p.opts.max_connections, 7);
        assert_eq!(p.opts.max_requests_per_connection, 3);
        assert_eq!(p.opts.connect_timeout, Duration::from_millis(250));
        assert_eq!(p.opts.max_idle, 5);
        assert_eq!(p.siblings.len(), 1);
    }

    #[test]
    fn passthrough_is_its_endpoint() {
        let ep = Arc::new(Endpoint::new(addrs(1)[0], None));
        let t = Target::Passthrough(ep.clone(), Duration::from_secs(3));
        let p = pick(&t, None, &[], Proto::Http1, 8).unwrap();
        assert!(Arc::ptr_eq(&p.ep, &ep));
        assert_eq!(p.opts.connect_timeout, Duration::from_secs(3));
        assert_eq!(p.opts.max_connections, u32::MAX);
        assert!(p.siblings.is_empty());
    }
}
