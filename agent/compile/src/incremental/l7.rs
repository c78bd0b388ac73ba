//! The node proxy's routing table in the per-Service pass.
//!
//! A Service no VirtualService names has, in the table `compile_l7` builds, a plain-forwarding
//! entry and its own cluster for each HTTP port when a DestinationRule names it, and for an
//! HTTP port without endpoints; usually nothing. The entries are made of its frontends,
//! EndpointSlices, DestinationRule and the labels of the Pods behind its endpoints. Usually
//! nothing else in the table depends on it, so a change to it replaces those entries and no
//! others; when another entry still routes to one of its clusters (a VirtualService's last good
//! routes), the pass declines ([`plan_l7`]).
//!
//! The pass declines ([`Unscoped`]) when the proxy has to start or stop taking one of the
//! changed Services' frontends (a listener opens or closes, the kernel's entry is steered): a
//! DestinationRule policy only the proxy enforces, an HTTP port without ready endpoints (with
//! `--http-no-endpoint-503`), or a frontend steered now.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use meshpath_model::l7::{Cluster, ClusterKey, L7Config, ServiceRoutes};
use meshpath_model::{ClusterModel, ObjectRef, Protocol};

use super::{Plan, Unscoped};
use crate::l7::{clusters::Ctx, plain_forwarding, socket, L7Compiled};
use crate::lb::policy_needs_proxy;
use crate::{Compiled, FrontendAddr};

/// The Pods' addresses as of the last pass: a Pod deleted or moved to another address took its
/// labels away from the endpoints at its former one.
#[derive(Clone, Debug, Default)]
pub struct PodIps(HashMap<ObjectRef, Ipv4Addr>);

impl PodIps {
    pub fn new(model: &ClusterModel) -> Self {
        Self(
            model
                .pods
                .iter()
                .filter_map(|(id, p)| Some((id.clone(), p.ip?)))
                .collect(),
        )
    }

    /// Brings the addresses of `pods` to what `model` says.
    pub fn update(&mut self, model: &ClusterModel, pods: &BTreeSet<ObjectRef>) {
        for id in pods {
            match model.pods.get(id).and_then(|p| p.ip) {
                Some(ip) => self.0.insert(id.clone(), ip),
                None => self.0.remove(id),
            };
        }
    }
}

/// The Services whose clusters carry (or carried) the labels of `pods`: by an endpoint's
/// `targetRef`, or by a backend at the Pod's address, now or as of the last pass (`known`). A
/// Pod edit changes their routing-table entries, not their map entries. Only Services with
/// entries in `table` (the routing table the last pass left) are looked at: a Pod's labels
/// reach no other, so the cost is the table's, not the cluster's.
pub fn services_of_pods(
    model: &ClusterModel,
    compiled: &Compiled,
    state: &super::State,
    table: &L7Config,
    pods: &BTreeSet<ObjectRef>,
    known: &PodIps,
) -> BTreeSet<ObjectRef> {
    let mut out = BTreeSet::new();
    if pods.is_empty() || table.clusters.is_empty() {
        return out;
    }
    let mut ips = BTreeSet::new();
    for id in pods {
        ips.extend(model.pods.get(id).and_then(|p| p.ip));
        ips.extend(known.0.get(id));
    }
    // Keyed by Service first: each Service once.
    let mut in_table: BTreeSet<ObjectRef> = BTreeSet::new();
    for key in table.clusters.keys() {
        if in_table.last() != Some(&key.service) {
            in_table.insert(key.service.clone());
        }
    }
    for service in &in_table {
        let at_pod = state.frontends_of(service).iter().any(|addr| {
            compiled
                .frontends
                .get(addr)
                .is_some_and(|fe| fe.backends.iter().any(|b| ips.contains(&b.ip)))
        });
        if at_pod {
            out.insert(service.clone());
        }
    }
    let slices = meshpath_model::SliceIndex::for_services(model, &in_table);
    for service in &in_table {
        let names_one = slices.slices_for(service).any(|slice| {
            slice.endpoints.iter().any(|ep| {
                ep.pod_name
                    .as_ref()
                    .is_some_and(|name| pods.contains(&ObjectRef::new(&slice.id.namespace, name)))
            })
        });
        if names_one {
            out.insert(service.clone());
        }
    }
    out
}

/// The routing-table entries of the changed Services after a per-Service pass, built from its
/// [`Plan`] before anything is applied.
#[derive(Clone, Debug, Default)]
pub struct L7Patch {
    /// Where the changed Services' entries were (their former frontends).
    old: Vec<SocketAddr>,
    listeners: Vec<(SocketAddr, Arc<ServiceRoutes>)>,
    clusters: Vec<(ClusterKey, Arc<Cluster>)>,
}

/// What `compile_l7` would give `changed` (Services the caller checked no VirtualService names
/// and no client sees another DestinationRule for), or `Err` when the proxy would have to take
/// one of their frontends, or when `table` (the last pass's) holds a cluster of theirs that
/// their own entries do not account for: another entry routes to it (a VirtualService whose
/// edit did not compile keeps its last good routes, which may name a Service its current
/// version does not). `steered` is whether a frontend is steered to the proxy now;
/// `no_endpoint_503` whether HTTP ports without endpoints are.
pub fn plan_l7(
    model: &ClusterModel,
    compiled: &Compiled,
    plan: &Plan,
    changed: &BTreeSet<ObjectRef>,
    table: &L7Compiled,
    steered: impl Fn(&FrontendAddr) -> bool,
    no_endpoint_503: bool,
) -> Result<L7Patch, Unscoped> {
    let patch = plan_entries(model, compiled, plan, changed, steered, no_endpoint_503)?;
    // The clusters the patch drops: fine when only the changed Services' own entries name them.
    let kept: BTreeSet<&ClusterKey> = patch.clusters.iter().map(|(k, _)| k).collect();
    let dropped: BTreeSet<&ClusterKey> = changed
        .iter()
        .flat_map(|s| clusters_of(&table.config, s).map(|(k, _)| k))
        .filter(|k| !kept.contains(k))
        .collect();
    if dropped.is_empty() {
        return Ok(patch);
    }
    let own_entry = |addr: &SocketAddr, r: &ServiceRoutes| {
        patch.old.contains(addr) && changed.contains(&r.service)
    };
    let from_listeners = table
        .config
        .listeners
        .iter()
        .filter(|(addr, r)| !own_entry(addr, r))
        .flat_map(|(_, r)| crate::l7::routes::cluster_keys(r));
    let from_tcp = table.tcp_routes.values().flatten().map(|(k, _)| k.clone());
    if let Some(key) = from_listeners.chain(from_tcp).find(|k| dropped.contains(k)) {
        return Err(Unscoped::RoutedTo {
            service: key.service.clone(),
            port: key.port,
        });
    }
    Ok(patch)
}

fn plan_entries(
    model: &ClusterModel,
    compiled: &Compiled,
    plan: &Plan,
    changed: &BTreeSet<ObjectRef>,
    steered: impl Fn(&FrontendAddr) -> bool,
    no_endpoint_503: bool,
) -> Result<L7Patch, Unscoped> {
    for addr in plan.old_addrs() {
        if steered(addr) {
            return Err(Unscoped::Steered {
                service: compiled.frontends[addr].service.clone(),
                port: addr.port,
            });
        }
    }
    let mut patch = L7Patch {
        old: plan
            .old_addrs()
            .iter()
            .filter(|a| a.protocol == Protocol::Tcp)
            .map(|a| socket(*a))
            .collect(),
        ..L7Patch::default()
    };
    // No rule names them and each HTTP port has endpoints: no entries, and nothing to build
    // (the context scans the cluster's Pods and rules).
    let no_endpoint = |(a, fe): &(FrontendAddr, _)| crate::lb::http_without_endpoint(model, a, fe);
    if model.destination_rules.is_empty() && !plan.fresh().iter().any(no_endpoint) {
        return Ok(patch);
    }
    let ctx = Ctx::for_services(model, plan.fresh(), changed);
    // Their entries in the full table: plain forwarding for every HTTP port when some
    // DestinationRule names the Service, and for an HTTP port without endpoints (which the
    // proxy takes, so the pass declines, with `--http-no-endpoint-503`). Usually none.
    for service in changed {
        let named = ctx.scopes().names(service);
        for (addr, _) in ctx.http_frontends(service) {
            let no_endpoint = plan
                .fresh()
                .iter()
                .any(|(a, fe)| *a == addr && crate::lb::http_without_endpoint(model, a, fe));
            if no_endpoint && no_endpoint_503 {
                return Err(Unscoped::Steered {
                    service: service.clone(),
                    port: addr.port,
                });
            }
            if !named && !no_endpoint {
                continue;
            }
            let routes = plain_forwarding(service, addr.port);
            // `compile_l7` leaves a cluster out when its Service is gone; the frontend is too.
            let Some(cluster) = ctx.cluster(&routes.default_cluster) else {
                continue;
            };
            if policy_needs_proxy(&cluster.policy) {
                return Err(Unscoped::Steered {
                    service: service.clone(),
                    port: addr.port,
                });
            }
            patch
                .clusters
                .push((routes.default_cluster.clone(), Arc::new(cluster)));
            patch.listeners.push((socket(addr), Arc::new(routes)));
        }
    }
    Ok(patch)
}

impl L7Patch {
    /// Replaces `changed`'s entries in `config` (the table the last pass left) with this patch's.
    pub fn apply(self, config: &mut L7Config, changed: &BTreeSet<ObjectRef>) {
        let mut removed: BTreeMap<ClusterKey, Arc<Cluster>> = BTreeMap::new();
        let mut removed_listeners: BTreeMap<SocketAddr, Arc<ServiceRoutes>> = BTreeMap::new();
        for addr in &self.old {
            if config
                .listeners
                .get(addr)
                .is_some_and(|r| changed.contains(&r.service))
            {
                if let Some(r) = config.listeners.remove(addr) {
                    removed_listeners.insert(*addr, r);
                }
            }
        }
        for service in changed {
            let keys: Vec<ClusterKey> = clusters_of(config, service)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                if let Some(c) = config.clusters.remove(&k) {
                    removed.insert(k, c);
                }
            }
        }
        // What the change left as it was stays the same allocation (see `l7::shared`).
        for (a, r) in self.listeners {
            let r = match removed_listeners.remove(&a) {
                Some(old) if *old == *r => old,
                _ => r,
            };
            config.listeners.insert(a, r);
        }
        for (k, c) in self.clusters {
            let c = match removed.remove(&k) {
                Some(old) if *old == *c => old,
                _ => c,
            };
            config.clusters.insert(k, c);
        }
    }

    /// Whether applying the patch would change `config` (the table before [`L7Patch::apply`])
    /// for `changed`: e.g. a Pod edit that changed no label on their endpoints, or a change to a
    /// Service with endpoints (no entry before or after) leaves it as it was.
    pub fn changes(&self, config: &L7Config, changed: &BTreeSet<ObjectRef>) -> bool {
        let new: BTreeMap<&SocketAddr, &ServiceRoutes> =
            self.listeners.iter().map(|(a, r)| (a, &**r)).collect();
        let old_entry = |a: &SocketAddr| {
            config
                .listeners
                .get(a)
                .filter(|r| changed.contains(&r.service))
                .map(|r| &**r)
        };
        let same_listeners = self.old.iter().all(|a| old_entry(a) == new.get(a).copied())
            && self
                .listeners
                .iter()
                .all(|(a, r)| config.listeners.get(a).is_some_and(|old| **old == **r));
        let new_clusters: BTreeMap<&ClusterKey, &Cluster> =
            self.clusters.iter().map(|(k, c)| (k, &**c)).collect();
        let same_clusters = changed.iter().all(|service| {
            clusters_of(config, service).all(|(k, c)| new_clusters.get(k) == Some(&&**c))
        }) && self
            .clusters
            .iter()
            .all(|(k, c)| config.clusters.get(k).is_some_and(|old| **old == **c));
        !(same_listeners && same_clusters)
    }
}

/// `service`'s clusters in `config` (keyed by Service first, so one range).
fn clusters_of<'c>(
    config: &'c L7Config,
    service: &ObjectRef,
) -> impl Iterator<Item = (&'c ClusterKey, &'c Arc<Cluster>)> + 'c {
    let first = ClusterKey {
        service: service.clone(),
        port: 0,
        subset: None,
        view: None,
    };
    let service = service.clone();
    config
        .clusters
        .range(first..)
        .take_while(move |(k, _)| k.service == service)
}
