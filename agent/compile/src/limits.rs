//! Kernel connection limits per route destination, for frontends with VirtualService `tcp:`
//! weighted slots.
//!
//! Semantics follow Envoy as Istio configures it: each route destination (service, port, subset)
//! is its own Envoy cluster with its own connection breaker, whose threshold is the subset's
//! merged traffic policy (the subset's `connectionPool.tcp.maxConnections`, else the
//! DestinationRule's top-level one). So a connect the kernel balances to a slot of destination D
//! counts against D's limit, and never against the limit of the frontend it was made to:
//! - D with a subset and a limit: a *group*, one per destination, with a stable id, shared by
//!   every frontend routing to it;
//! - D without a subset: the service port's own service-wide counter (the same Envoy cluster,
//!   `outbound|port||host`, as plain connects to that service);
//! - D without a limit: unlimited (Istio sets an unset `maxConnections` to 2^32-1).
//!
//! Plain frontends (no weighted slots) keep counting against their service-wide limit.

use std::collections::BTreeMap;

use meshpath_common::{
    ipv4_be, port_be, ServiceKey, ServiceName, SockLimit, MAX_LIMIT_GROUPS, SVC_FLAG_ROUTE_LIMITS,
};

use meshpath_model::l7::ClusterKey;
use meshpath_model::Protocol;

use super::l7::L7Compiled;
use super::MapContents;
use super::{alloc::IdAllocator, proto_number, weighted, BackendAddr, Compiled, FrontendAddr};

/// A route destination with a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitGroup {
    pub id: u32,
    pub max: u32,
}

/// What the route limits compile to; also the memory (stable group ids) the next pass starts
/// from, so a group keeps its id, and its live count, across unrelated edits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteLimits {
    pub groups: BTreeMap<ClusterKey, LimitGroup>,
    /// For each frontend with `tcp:` routes: what each route destination counts against, in the
    /// order of `L7Compiled::tcp_routes` (and so of the weighted endpoint lists).
    pub targets: BTreeMap<FrontendAddr, Vec<SockLimit>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "route destination {cluster}: no connection-limit group id left ({max} in use); its \
         connections are not limited"
    )]
    OutOfGroupIds { cluster: String, max: u32 },
}

/// Istio's name for a cluster, as the proxy's stats use it: `outbound|<port>|<subset>|<host>`.
pub fn cluster_name(key: &ClusterKey) -> String {
    format!(
        "outbound|{}|{}|{}.{}.svc.cluster.local{}",
        key.port,
        key.subset.as_deref().unwrap_or(""),
        key.service.name,
        key.service.namespace,
        meshpath_model::l7::RuleView::suffix(key.view.as_ref())
    )
}

pub fn route_limits(
    l7: &L7Compiled,
    compiled: &Compiled,
    previous: &RouteLimits,
) -> (RouteLimits, Vec<LimitError>) {
    let mut ids = IdAllocator::new(
        previous.groups.iter().map(|(k, g)| (k.clone(), g.id)),
        MAX_LIMIT_GROUPS - 1,
    );
    let mut out = RouteLimits::default();
    let mut errors = Vec::new();
    for (addr, routes) in &l7.tcp_routes {
        if !compiled.frontends.contains_key(addr) {
            continue;
        }
        let targets = routes
            .iter()
            .map(|(cluster, _)| {
                if cluster.subset.is_none() {
                    return own_counter(compiled, cluster);
                }
                let Some(max) = l7
                    .config
                    .clusters
                    .get(cluster)
                    .and_then(|c| c.policy.connection_pool.max_connections)
                else {
                    return SockLimit::NONE;
                };
                match ids.get_or_allocate(cluster.clone()) {
                    Some(id) => {
                        out.groups.insert(cluster.clone(), LimitGroup { id, max });
                        SockLimit::group(id)
                    }
                    None => {
                        let e = LimitError::OutOfGroupIds {
                            cluster: cluster_name(cluster),
                            max: MAX_LIMIT_GROUPS - 1,
                        };
                        if !errors.contains(&e) {
                            errors.push(e);
                        }
                        SockLimit::NONE
                    }
                }
            })
            .collect();
        out.targets.insert(*addr, targets);
    }
    (out, errors)
}

/// A destination without a subset is the service port's default cluster: the service-wide
/// counter of its frontend, when that frontend has a limit (`max_connections`, set from the
/// DestinationRule's top-level policy before this runs).
fn own_counter(compiled: &Compiled, cluster: &ClusterKey) -> SockLimit {
    compiled
        .frontends
        .iter()
        .find(|(addr, fe)| {
            fe.service == cluster.service
                && addr.port == cluster.port
                && addr.protocol == Protocol::Tcp
        })
        .filter(|(_, fe)| fe.max_connections.is_some())
        .map_or(SockLimit::NONE, |(_, fe)| SockLimit::service(fe.svc_id))
}

impl RouteLimits {
    /// Adds the slot targets, group limits and names to `contents` (already rendered from
    /// `compiled` with the same `weighted` lists), and flags each routed frontend's entries with
    /// [`SVC_FLAG_ROUTE_LIMITS`] so connect4 counts its connects per slot, never service-wide.
    pub fn render(
        &self,
        contents: &mut MapContents,
        compiled: &Compiled,
        weighted: &BTreeMap<FrontendAddr, Vec<(Vec<BackendAddr>, u32)>>,
    ) {
        for (addr, targets) in &self.targets {
            let Some(w) = weighted.get(addr) else {
                continue;
            };
            debug_assert_eq!(w.len(), targets.len(), "{addr:?}");
            let base = ServiceKey::new(
                ipv4_be(addr.ip.octets()),
                port_be(addr.port),
                proto_number(addr.protocol),
                0,
            );
            // A frontend steered to the proxy has one slot, not these: leave it alone.
            let Some(header) = contents.services.get(&base) else {
                continue;
            };
            let slots = weighted::slots(w, &compiled.backend_ids);
            if usize::from(header.count) != slots.len() {
                continue;
            }
            for (i, (dest, _)) in slots.iter().enumerate() {
                match targets.get(*dest) {
                    Some(t) if *t != SockLimit::NONE => {
                        contents
                            .slot_limits
                            .insert(base.with_slot(i as u16 + 1), *t);
                    }
                    _ => {}
                }
            }
            for slot in 0..=slots.len() as u16 {
                if let Some(v) = contents.services.get_mut(&base.with_slot(slot)) {
                    v.flags |= SVC_FLAG_ROUTE_LIMITS;
                }
            }
        }
        for (key, g) in &self.groups {
            contents.group_limits.insert(g.id, g.max);
            contents
                .group_names
                .insert(g.id, ServiceName::new(&cluster_name(key)));
        }
    }
}

#[cfg(test)]
mod tests;
