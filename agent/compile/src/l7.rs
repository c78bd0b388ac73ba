//! The Istio half of compiling: VirtualServices and DestinationRules of the model, with the
//! Services, EndpointSlices and Pods they name, → the proxy's routing table ([`L7Config`]), the
//! frontends the kernel must steer to the proxy ([`needs_proxy`]) and the per-connection weights
//! of `tcp:` routes, which the kernel applies itself.
//!
//! Pure like [`compile`](super::compile), which runs first: endpoints are the backends it chose
//! for each frontend. Cross-object problems (a destination that names no Service, or a port it
//! does not have) are errors naming the VirtualService's file, field and reason, and that
//! VirtualService keeps what it compiled to before (last good), as a Service does in `compile`.
//! A subset no DestinationRule defines is only a warning ([`L7Error::is_warning`]), as in Istio:
//! the route is compiled to a cluster the table does not hold (the proxy answers 503 `NC`) until
//! a DestinationRule defines the subset.
//!
//! Precedence, where Istio uses creation time (which manifests do not have): the first
//! VirtualService in namespace/name order owns a host; exact hosts before wildcards, and the
//! most specific wildcard (longest fixed part) before the others, as Istio picks. A Service's
//! DestinationRule is the one Istio's sidecar scope picks for the client's namespace
//! (`rule_scope`: its own namespace's rules, then the Service's namespace's and the root
//! namespace's exported to it), each step taking the most specific host, then
//! namespace/name order.

pub(crate) mod clusters;
mod cors;
mod delegate;
mod error;
mod export;
pub(crate) mod routes;
pub(crate) mod rule_scope;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use meshpath_model::istio::VirtualService;
use meshpath_model::l7::{Cluster, ClusterKey, Export, L7Config, ServiceRoutes};
use meshpath_model::{ClusterModel, ObjectRef};

use super::{Compiled, FrontendAddr};

pub use clusters::node_locality;
pub use error::L7Error;

/// What one compilation of the Istio objects produces; also the last good state the next one
/// falls back to.
#[derive(Clone, Debug, Default)]
pub struct L7Compiled {
    pub config: L7Config,
    /// `tcp:` routes: for each frontend, the clusters a new connection goes to, with weights
    /// summing to 100. Their endpoints are in `config.clusters`. Applied by the kernel, so these
    /// frontends are not steered to the proxy.
    pub tcp_routes: BTreeMap<FrontendAddr, Vec<(ClusterKey, u32)>>,
}

/// The frontends whose connections the kernel must hand to the proxy: listeners with `http:`
/// routes, or whose service policy only the proxy can enforce. The routing table also holds a
/// plain forwarding entry for each HTTP port of a Service some DestinationRule names and for
/// each HTTP port without endpoints (steered for its 503 with `--http-no-endpoint-503`), and no
/// entry for any other frontend: the connections the proxy still holds for a frontend that left
/// it (its VirtualService deleted) are served by the entry they last used, which the proxy
/// keeps for them (`meshpath_proxy`'s retired listeners).
pub fn needs_proxy(config: &L7Config) -> BTreeSet<FrontendAddr> {
    crate::lb::steer_reasons(config).into_keys().collect()
}

/// The routing table, with every problem found: errors (the VirtualService keeps its last good
/// routes) and warnings ([`L7Error::is_warning`]: it is applied anyway).
pub fn compile_l7(
    model: &ClusterModel,
    compiled: &Compiled,
    previous: &L7Compiled,
) -> (L7Compiled, Vec<L7Error>) {
    let ctx = clusters::Ctx::new(model, compiled);
    let mut out = L7Compiled::default();
    let mut errors = Vec::new();
    let mut keys: BTreeSet<ClusterKey> = BTreeSet::new();
    let mut kept: BTreeSet<ClusterKey> = BTreeSet::new();

    let merged = delegate::merge(&model.virtual_services);
    let chains = export::chains(model, merged.values().map(|vs| &**vs));
    // Each VirtualService's routes at each listener, assembled into chains below.
    let mut by_addr: BTreeMap<SocketAddr, BTreeMap<ObjectRef, ServiceRoutes>> = BTreeMap::new();
    for (vs, services) in claims(&chains) {
        match compile_vs(&ctx, vs, &services, &mut errors) {
            Ok(compiled) => {
                for (addr, routes) in compiled.listeners {
                    keys.extend(routes::cluster_keys(&routes));
                    by_addr
                        .entry(addr)
                        .or_default()
                        .insert(vs.id.clone(), routes);
                }
                // The kernel applies `tcp:` routes to every client: only a VirtualService
                // exported everywhere has them applied.
                for (addr, weights) in compiled.tcp.into_iter().filter(|_| vs.export_to.is_none()) {
                    keys.extend(weights.iter().map(|(k, _)| k.clone()));
                    out.tcp_routes.insert(addr, weights);
                }
            }
            Err(vs_errors) => {
                errors.extend(vs_errors);
                // Last good: what these services compiled to before, clusters included.
                for (addr, routes) in &previous.config.listeners {
                    if !services.contains(&routes.service) {
                        continue;
                    }
                    if let Some(own) = export::previous_of(routes, &vs.id) {
                        kept.extend(routes::cluster_keys(&own));
                        by_addr.entry(*addr).or_default().insert(vs.id.clone(), own);
                    }
                }
                for (addr, weights) in &previous.tcp_routes {
                    if compiled
                        .frontends
                        .get(addr)
                        .is_some_and(|f| services.contains(&f.service))
                    {
                        kept.extend(weights.iter().map(|(k, _)| k.clone()));
                        out.tcp_routes
                            .entry(*addr)
                            .or_insert_with(|| weights.clone());
                    }
                }
            }
        }
    }
    let mut listeners: BTreeMap<SocketAddr, ServiceRoutes> = BTreeMap::new();
    for (addr, by_vs) in by_addr {
        let Some(service) = by_vs.values().next().map(|r| r.service.clone()) else {
            continue;
        };
        let chain = chains.get(&service).map_or(&[][..], Vec::as_slice);
        if let Some(routes) = export::assemble(addr, &service, chain, by_vs) {
            // The plain forwarding a chain may end with.
            keys.extend(routes::cluster_keys(&routes));
            listeners.insert(addr, routes);
        }
    }

    // Plain forwarding for the other HTTP ports of a Service some DestinationRule names (the
    // proxy takes them when a rule's policy or a client namespace's own rule needs it:
    // `lb::steer_reasons` reads this table), and for an HTTP port without endpoints (steered for
    // its 503 with `--http-no-endpoint-503`). Other frontends have no entry: the proxy holds only
    // what it may be sent.
    for service in ctx.scopes().named() {
        for (addr, _) in ctx.http_frontends(service) {
            listeners.entry(socket(addr)).or_insert_with(|| {
                let routes = plain_forwarding(service, addr.port);
                keys.insert(routes.default_cluster.clone());
                routes
            });
        }
    }
    for (addr, fe) in &compiled.frontends {
        if crate::lb::http_without_endpoint(model, addr, fe) {
            listeners.entry(socket(*addr)).or_insert_with(|| {
                let routes = plain_forwarding(&fe.service, addr.port);
                keys.insert(routes.default_cluster.clone());
                routes
            });
        }
    }

    // Clients that see other DestinationRules (`exportTo`, rules of their own namespace) get
    // entries of their own in each listener's chain, with clusters that follow their rule.
    if !ctx.scopes().is_empty() {
        for (addr, routes) in std::mem::take(&mut listeners) {
            let routes = rule_scope::expand(routes, ctx.scopes());
            keys.extend(routes::cluster_keys(&routes));
            listeners.insert(addr, routes);
        }
    }

    out.config.listeners = listeners
        .into_iter()
        .map(|(addr, routes)| {
            let shared = match previous.config.listeners.get(&addr) {
                Some(last) if **last == routes => Arc::clone(last),
                _ => Arc::new(routes),
            };
            (addr, shared)
        })
        .collect();

    // A cluster whose subset is not defined stays out of the table: its routes answer 503 `NC`
    // until a DestinationRule defines it, as Envoy does for a cluster it was not sent.
    for key in &keys {
        if let Some(cluster) = ctx.cluster(key) {
            let shared = shared(previous, key, cluster);
            out.config.clusters.insert(key.clone(), shared);
        }
    }
    // A kept VirtualService keeps its clusters too, the last good one when the subset is gone.
    for key in kept.difference(&keys) {
        match ctx.cluster(key) {
            Some(cluster) => {
                let shared = shared(previous, key, cluster);
                out.config.clusters.insert(key.clone(), shared);
            }
            None => {
                if let Some(last) = previous.config.clusters.get(key) {
                    out.config.clusters.insert(key.clone(), Arc::clone(last));
                }
            }
        }
    }
    (out, errors)
}

/// `cluster`, as the previous table's allocation when that one is equal: tables share what a
/// change did not touch (and the proxy then compares it by pointer).
fn shared(previous: &L7Compiled, key: &ClusterKey, cluster: Cluster) -> Arc<Cluster> {
    match previous.config.clusters.get(key) {
        Some(last) if **last == cluster => Arc::clone(last),
        _ => Arc::new(cluster),
    }
}

/// The services each VirtualService routes (it is in their chain, see [`export::chains`]),
/// in VirtualService order. Hosts that name no Service are skipped: Istio would route them to
/// external hosts, which meshpath does not do.
fn claims<'m>(
    chains: &BTreeMap<&'m ObjectRef, Vec<&'m VirtualService>>,
) -> Vec<(&'m VirtualService, BTreeSet<ObjectRef>)> {
    let mut by_vs: BTreeMap<&ObjectRef, (&VirtualService, BTreeSet<ObjectRef>)> = BTreeMap::new();
    for (service, chain) in chains {
        for vs in chain {
            by_vs
                .entry(&vs.id)
                .or_insert_with(|| (vs, BTreeSet::new()))
                .1
                .insert((*service).clone());
        }
    }
    by_vs.into_values().collect()
}

#[derive(Default)]
struct VsOutput {
    listeners: Vec<(SocketAddr, ServiceRoutes)>,
    tcp: Vec<(FrontendAddr, Vec<(ClusterKey, u32)>)>,
}

/// One VirtualService for the services it owns; every error found, not just the first.
/// Warnings (which do not stop it from compiling) are added to `warnings`.
fn compile_vs(
    ctx: &clusters::Ctx<'_>,
    vs: &VirtualService,
    services: &BTreeSet<ObjectRef>,
    warnings: &mut Vec<L7Error>,
) -> Result<VsOutput, Vec<L7Error>> {
    let mut out = VsOutput::default();
    let mut errors = Vec::new();
    let mut found = Vec::new();
    // The same destination is checked once per port; report it once.
    let once = |list: &mut Vec<L7Error>, e: L7Error| {
        if !list.contains(&e) {
            list.push(e);
        }
    };
    for service in services {
        for (addr, http_capable) in ctx.tcp_frontends(service) {
            let mut http = Vec::new();
            if http_capable {
                for route in &vs.http {
                    match routes::http_route(ctx, vs, route, addr.port, &mut found) {
                        Ok(Some(r)) => http.push(r),
                        Ok(None) => {}
                        Err(errs) => errs.into_iter().for_each(|e| once(&mut errors, e)),
                    }
                }
            }
            if !http.is_empty() {
                let default_cluster = ClusterKey {
                    service: service.clone(),
                    port: addr.port,
                    subset: None,
                    view: None,
                };
                let routes = ServiceRoutes {
                    service: service.clone(),
                    port: addr.port,
                    http,
                    default_cluster,
                    export: Export::default(),
                };
                out.listeners.push((socket(addr), routes));
                continue;
            }
            let Some(tcp) = vs
                .tcp
                .iter()
                .find(|t| t.ports.is_empty() || t.ports.contains(&addr.port))
            else {
                continue;
            };
            let field = format!("spec.tcp[{}].route", tcp.index);
            match routes::weighted(ctx, vs, &field, &tcp.route, addr.port, &mut found) {
                Ok(weights) => out.tcp.push((addr, weights)),
                Err(errs) => errs.into_iter().for_each(|e| once(&mut errors, e)),
            }
        }
    }
    for w in found {
        once(warnings, w);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

pub(crate) fn socket(addr: FrontendAddr) -> SocketAddr {
    SocketAddr::from((addr.ip, addr.port))
}

/// The entry of an HTTP frontend no VirtualService routes: forwarding to the Service's own
/// cluster for the port.
pub(crate) use export::plain as plain_forwarding;

/// `connectionPool.tcp.maxConnections` of each Service's DestinationRule (the service-wide
/// policy), for the kernel's connection limit on frontends that stay on the kernel path.
pub fn kernel_connection_limits(
    model: &ClusterModel,
    compiled: &Compiled,
) -> BTreeMap<ObjectRef, u32> {
    let ctx = clusters::Ctx::new(model, compiled);
    ctx.rules()
        .filter_map(|(service, rule)| {
            let max = rule
                .traffic_policy
                .connection_pool
                .as_ref()?
                .max_connections?;
            Some((service.clone(), max))
        })
        .collect()
}
