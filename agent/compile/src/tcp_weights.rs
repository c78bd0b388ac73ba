//! The `tcp:` routes of the routing table as weighted endpoint lists for the kernel: an L4 rule,
//! applied per connection, never through the proxy.

use std::collections::BTreeMap;

use super::ejection::{healthy_endpoints, EjectedIps};
use super::l7::L7Compiled;
use super::{BackendAddr, Compiled, FrontendAddr};

/// Each `tcp:`-routed frontend's clusters as (endpoints, weight), without the pods outlier
/// detection ejected ([`super::ejection`]).
pub fn tcp_weights(
    l7: &L7Compiled,
    compiled: &Compiled,
    ejected: &EjectedIps,
) -> BTreeMap<FrontendAddr, Vec<(Vec<BackendAddr>, u32)>> {
    l7.tcp_routes
        .iter()
        .filter(|(addr, _)| compiled.frontends.contains_key(addr))
        .map(|(addr, routes)| {
            let weights = routes
                .iter()
                .map(|(cluster, weight)| {
                    let endpoints = l7
                        .config
                        .clusters
                        .get(cluster)
                        .map(|c| {
                            c.endpoints
                                .iter()
                                .filter_map(|e| match e.addr {
                                    std::net::SocketAddr::V4(a) => Some(BackendAddr {
                                        ip: *a.ip(),
                                        port: a.port(),
                                        protocol: meshpath_model::Protocol::Tcp,
                                    }),
                                    std::net::SocketAddr::V6(_) => None,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let endpoints = healthy_endpoints(ejected, &l7.config, cluster, endpoints);
                    (endpoints, *weight)
                })
                .collect();
            (*addr, weights)
        })
        .collect()
}
