//! `outlierDetection` in the kernel: endpoints the proxy ejected also leave the kernel's
//! selection of their service.
//!
//! The proxy only sees the requests steered to it, and a DestinationRule with
//! `outlierDetection` steers its service's HTTP ports there (`needs_proxy`), so the proxy is
//! the detector. What the kernel adds: the same pod stops receiving the service's other
//! traffic too — its other ports and TCP ports, which the kernel balances at connect time.
//! An ejection is of a pod IP: Envoy ejects per cluster (port), but a pod failing one port is
//! taken out of every frontend of that service, which is what an L4 client can be spared.
//!
//! VirtualService `tcp:` routes (weighted slots, one share per destination cluster) lose the
//! ejected pods from each destination's endpoints, with Envoy's panic rule per cluster: a
//! destination (a subset, say) whose endpoints would all be ejected, or fewer than its
//! `minHealthPercent`, keeps them all, so its weight never moves to the other destinations.
//!
//! A plain frontend whose backends would all be ejected keeps them all too (the kernel has no
//! "no healthy upstream" answer; refusing every connect would be worse than trying).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use meshpath_model::l7::{ClusterKey, L7Config};
use meshpath_model::ObjectRef;

use crate::{BackendAddr, Compiled};

/// Pod IPs to take out of the kernel's selection, per service.
pub type EjectedIps = BTreeMap<ObjectRef, BTreeSet<Ipv4Addr>>;

/// The pod IPs of `ejected` (endpoint addresses of the proxy's clusters), per service: only
/// from clusters that have outlier detection, so a stale set (the DestinationRule just lost
/// it) removes nothing.
pub fn ejected_ips(l7: &L7Config, ejected: &BTreeSet<SocketAddr>) -> EjectedIps {
    let mut drop = EjectedIps::new();
    if ejected.is_empty() {
        return drop;
    }
    for (key, cluster) in &l7.clusters {
        if cluster.policy.outlier_detection.is_none() {
            continue;
        }
        for e in cluster
            .endpoints
            .iter()
            .filter(|e| ejected.contains(&e.addr))
        {
            if let IpAddr::V4(ip) = e.addr.ip() {
                drop.entry(key.service.clone()).or_default().insert(ip);
            }
        }
    }
    drop
}

/// The endpoints of `tcp:` route destination `key` the kernel may pick: without the ejected
/// pods, unless that leaves none or fewer than the cluster's `minHealthPercent` (Envoy's
/// panic threshold, which Istio maps it to): then all of them.
pub fn healthy_endpoints(
    drop: &EjectedIps,
    l7: &L7Config,
    key: &ClusterKey,
    endpoints: Vec<BackendAddr>,
) -> Vec<BackendAddr> {
    let Some(ips) = drop.get(&key.service) else {
        return endpoints;
    };
    let kept: Vec<BackendAddr> = endpoints
        .iter()
        .filter(|b| !ips.contains(&b.ip))
        .copied()
        .collect();
    let min_health = l7
        .clusters
        .get(key)
        .and_then(|c| c.policy.outlier_detection.as_ref())
        .map_or(0, |o| o.min_health_percent as usize);
    if kept.is_empty() || kept.len() * 100 < endpoints.len() * min_health {
        return endpoints;
    }
    kept
}

/// `compiled` without the ejected pods (see [`ejected_ips`]), `None` when nothing is to be
/// removed (the usual case: no copy).
pub fn exclude_ejected(compiled: &Compiled, drop: &EjectedIps) -> Option<Compiled> {
    if drop.is_empty() {
        return None;
    }
    let mut out = compiled.clone();
    let mut changed = false;
    for fe in out.frontends.values_mut() {
        let Some(ips) = drop.get(&fe.service) else {
            continue;
        };
        let kept: Vec<_> = fe
            .backends
            .iter()
            .filter(|b| !ips.contains(&b.ip))
            .copied()
            .collect();
        if !kept.is_empty() && kept.len() < fe.backends.len() {
            fe.backends = kept;
            changed = true;
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Frontend, FrontendAddr};
    use meshpath_model::l7::{Cluster, ClusterKey, Endpoint, OutlierDetection, TrafficPolicy};
    use meshpath_model::{LbPolicy, Protocol};

    const POD_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const POD_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn be(ip: Ipv4Addr, port: u16) -> BackendAddr {
        BackendAddr {
            ip,
            port,
            protocol: Protocol::Tcp,
        }
    }

    /// Service `web` with an HTTP port (80 → 8080) and a TCP port (9000 → 9000) on two pods.
    fn compiled() -> Compiled {
        let mut c = Compiled::default();
        for (i, (port, target)) in [(80, 8080), (9000, 9000)].into_iter().enumerate() {
            let addr = FrontendAddr {
                ip: Ipv4Addr::new(10, 96, 0, 1),
                port,
                protocol: Protocol::Tcp,
            };
            let fe = Frontend {
                svc_id: i as u32 + 1,
                service: ObjectRef::new("default", "web"),
                port_name: None,
                lb_policy: LbPolicy::Random,
                affinity_timeout_sec: None,
                max_connections: None,
                lb_origin: Default::default(),
                proxy: Default::default(),
                backends: vec![be(POD_A, target), be(POD_B, target)],
            };
            c.frontends.insert(addr, fe);
        }
        c
    }

    fn l7(outlier: bool) -> L7Config {
        let key = ClusterKey {
            service: ObjectRef::new("default", "web"),
            port: 80,
            subset: None,
            view: None,
        };
        let endpoints = [POD_A, POD_B]
            .iter()
            .map(|ip| Endpoint {
                addr: SocketAddr::new((*ip).into(), 8080),
                labels: Default::default(),
                locality: Default::default(),
            })
            .collect();
        let policy = TrafficPolicy {
            outlier_detection: outlier.then(OutlierDetection::default),
            ..TrafficPolicy::default()
        };
        L7Config {
            clusters: [(key, Cluster { endpoints, policy }.into())]
                .into_iter()
                .collect(),
            ..L7Config::default()
        }
    }

    #[test]
    fn ejected_pod_leaves_every_frontend_of_its_service() {
        let ejected = BTreeSet::from([SocketAddr::new(POD_A.into(), 8080)]);
        let out = exclude_ejected(&compiled(), &ejected_ips(&l7(true), &ejected)).expect("changed");
        for fe in out.frontends.values() {
            assert_eq!(
                fe.backends.iter().map(|b| b.ip).collect::<Vec<_>>(),
                vec![POD_B]
            );
        }
    }

    #[test]
    fn nothing_removed_without_outlier_detection_or_when_all_would_go() {
        let a = SocketAddr::new(POD_A.into(), 8080);
        let run =
            |outlier, ejected| exclude_ejected(&compiled(), &ejected_ips(&l7(outlier), &ejected));
        assert!(run(false, BTreeSet::from([a])).is_none());
        let both = BTreeSet::from([a, SocketAddr::new(POD_B.into(), 8080)]);
        assert!(run(true, both).is_none());
        assert!(run(true, BTreeSet::new()).is_none());
    }

    fn subset(name: &str) -> ClusterKey {
        ClusterKey {
            service: ObjectRef::new("default", "web"),
            port: 9000,
            subset: Some(name.into()),
            view: None,
        }
    }

    #[test]
    fn tcp_route_destinations_lose_ejected_pods_but_never_all_of_them() {
        let a = SocketAddr::new(POD_A.into(), 8080);
        let b = SocketAddr::new(POD_B.into(), 8080);
        let mut cfg = l7(true);
        let v1 = vec![be(POD_A, 9000), be(POD_B, 9000)];
        let v2 = vec![be(POD_B, 9000)];

        let drop = ejected_ips(&cfg, &BTreeSet::from([a]));
        assert_eq!(
            healthy_endpoints(&drop, &cfg, &subset("v1"), v1.clone()),
            vec![be(POD_B, 9000)]
        );
        // All of v2 ejected: it keeps its pod (its share of connections stays its own).
        let drop = ejected_ips(&cfg, &BTreeSet::from([b]));
        assert_eq!(
            healthy_endpoints(&drop, &cfg, &subset("v2"), v2.clone()),
            v2
        );
        assert_eq!(
            healthy_endpoints(&drop, &cfg, &subset("v1"), v1.clone()),
            vec![be(POD_A, 9000)]
        );

        // Below the destination's minHealthPercent, ejections are ignored.
        let od = OutlierDetection {
            min_health_percent: 60,
            ..OutlierDetection::default()
        };
        let v1_cluster = Cluster {
            endpoints: vec![],
            policy: TrafficPolicy {
                outlier_detection: Some(od),
                ..TrafficPolicy::default()
            },
        };
        cfg.clusters.insert(subset("v1"), v1_cluster.into());
        let drop = ejected_ips(&cfg, &BTreeSet::from([a]));
        assert_eq!(
            healthy_endpoints(&drop, &cfg, &subset("v1"), v1.clone()),
            v1
        );

        // Nothing ejected, or another service's pods: unchanged.
        let drop = ejected_ips(&cfg, &BTreeSet::new());
        assert_eq!(
            healthy_endpoints(&drop, &cfg, &subset("v1"), v1.clone()),
            v1
        );
    }
}
