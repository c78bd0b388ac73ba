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
//! Not covered: VirtualService `tcp:` routes (their weighted endpoint lists keep ejected pods),
//! and a frontend whose backends would all be ejected keeps them all (the kernel has no "no
//! healthy upstream" answer; refusing every connect would be worse than trying).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::compile::Compiled;
use crate::l7::L7Config;
use crate::model::ObjectRef;

/// `compiled` without the ejected endpoints, `None` when nothing is to be removed (the usual
/// case: no copy). `ejected` holds endpoint addresses of the proxy's clusters.
pub fn exclude_ejected(
    compiled: &Compiled,
    l7: &L7Config,
    ejected: &BTreeSet<SocketAddr>,
) -> Option<Compiled> {
    if ejected.is_empty() {
        return None;
    }
    // Pod IPs to drop, per service: only from clusters that have outlier detection, so a stale
    // set (the DestinationRule just lost it) removes nothing.
    let mut drop: BTreeMap<&ObjectRef, BTreeSet<Ipv4Addr>> = BTreeMap::new();
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
                drop.entry(&key.service).or_default().insert(ip);
            }
        }
    }
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
    use crate::compile::{BackendAddr, Frontend, FrontendAddr};
    use crate::l7::{Cluster, ClusterKey, Endpoint, OutlierDetection, TrafficPolicy};
    use crate::model::{LbPolicy, Protocol};

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
        };
        let endpoints = [POD_A, POD_B]
            .iter()
            .map(|ip| Endpoint {
                addr: SocketAddr::new((*ip).into(), 8080),
                labels: Default::default(),
            })
            .collect();
        let policy = TrafficPolicy {
            outlier_detection: outlier.then(OutlierDetection::default),
            ..TrafficPolicy::default()
        };
        L7Config {
            clusters: [(key, Cluster { endpoints, policy })].into_iter().collect(),
            ..L7Config::default()
        }
    }

    #[test]
    fn ejected_pod_leaves_every_frontend_of_its_service() {
        let ejected = BTreeSet::from([SocketAddr::new(POD_A.into(), 8080)]);
        let out = exclude_ejected(&compiled(), &l7(true), &ejected).expect("changed");
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
        assert!(exclude_ejected(&compiled(), &l7(false), &BTreeSet::from([a])).is_none());
        let both = BTreeSet::from([a, SocketAddr::new(POD_B.into(), 8080)]);
        assert!(exclude_ejected(&compiled(), &l7(true), &both).is_none());
        assert!(exclude_ejected(&compiled(), &l7(true), &BTreeSet::new()).is_none());
    }
}
