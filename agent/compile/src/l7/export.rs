//! `exportTo` of VirtualServices: for each Service, the VirtualServices that may route it, in
//! precedence order, up to the first exported to every namespace; a client gets the first one
//! exported to its namespace (the proxy walks [`Export`]'s chain), and a client no
//! VirtualService is exported to gets plain forwarding, as if there were none.
//!
//! Precedence is Istio's for one host: exact hosts before wildcards, the most specific
//! wildcard first, then the first VirtualService in namespace/name order (Istio: the oldest).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use meshpath_model::istio::{hosts, VirtualService};
use meshpath_model::l7::{ClusterKey, Export, ServiceRoutes};
use meshpath_model::{ClusterModel, ObjectRef};

/// The VirtualServices of each Service they route, most precedent first, ending with the
/// first one exported to every namespace.
pub fn chains<'m>(
    model: &'m ClusterModel,
    virtual_services: impl Iterator<Item = &'m VirtualService>,
) -> BTreeMap<&'m ObjectRef, Vec<&'m VirtualService>> {
    // (specificity, VirtualService order) for each Service.
    let mut candidates: BTreeMap<&ObjectRef, Vec<(usize, usize, &VirtualService)>> =
        BTreeMap::new();
    // A VirtualService with nothing for the mesh (gateway-only) routes nothing.
    // Delegates (no hosts) come in only through their roots, already merged.
    let routing = virtual_services.filter(|vs| !vs.http.is_empty() || !vs.tcp.is_empty());
    for (order, vs) in routing.enumerate() {
        for host in &vs.hosts {
            let specificity = hosts::specificity(host);
            let services: Vec<&ObjectRef> = if hosts::is_wildcard(host) {
                hosts::wildcard_matches(host, &model.services).collect()
            } else {
                let Some(service) = hosts::resolve(host, &vs.id.namespace, &model.services) else {
                    tracing::warn!(virtual_service = %vs.id, host, origin = vs.origin.as_deref(),
                        "VirtualService host names no Service; skipped (external hosts are not routed)");
                    continue;
                };
                vec![service]
            };
            for service in services {
                let list = candidates.entry(service).or_default();
                match list.iter_mut().find(|(_, _, v)| v.id == vs.id) {
                    // Two hosts of one VirtualService name the Service: the closer counts.
                    Some(entry) => entry.0 = entry.0.max(specificity),
                    None => list.push((specificity, order, vs)),
                }
            }
        }
    }
    candidates
        .into_iter()
        .map(|(service, mut list)| {
            list.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut chain = Vec::new();
            for (_, _, vs) in list {
                if let Some(last) = chain
                    .last()
                    .filter(|l: &&&VirtualService| l.export_to.is_none())
                {
                    tracing::warn!(virtual_service = %vs.id, service = %service, owner = %last.id,
                        "service already routed by an earlier VirtualService; ignored here");
                    continue;
                }
                chain.push(vs);
            }
            (service, chain)
        })
        .collect()
}

/// The routes `vs` had at a listener, from a previous table's chain (its last good routes).
pub fn previous_of(routes: &ServiceRoutes, vs: &ObjectRef) -> Option<ServiceRoutes> {
    let mut at = Some(routes);
    while let Some(r) = at {
        // The entries for clients that see other DestinationRules are derived from the
        // VirtualService's own, which names no rule view.
        let own = super::routes::own_cluster_keys(r)
            .iter()
            .all(|k| k.view.is_none());
        if r.export.virtual_service.as_ref() == Some(vs) && own {
            let mut own = r.clone();
            own.export.otherwise = None;
            return Some(own);
        }
        at = r.export.otherwise.as_deref();
    }
    None
}

/// One listener's chain from each VirtualService's routes there (`by_vs`), in the Service's
/// `chain` order; a VirtualService without routes at this listener is left out.
pub fn assemble(
    addr: SocketAddr,
    service: &ObjectRef,
    chain: &[&VirtualService],
    mut by_vs: BTreeMap<ObjectRef, ServiceRoutes>,
) -> Option<ServiceRoutes> {
    let mut next: Option<ServiceRoutes> = None;
    for vs in chain.iter().rev() {
        let Some(mut routes) = by_vs.remove(&vs.id) else {
            continue;
        };
        let otherwise = vs
            .export_to
            .as_ref()
            .map(|_| Box::new(next.take().unwrap_or_else(|| plain(service, addr.port()))));
        routes.export = Export {
            virtual_service: Some(vs.id.clone()),
            to: vs.export_to.clone(),
            otherwise,
        };
        next = Some(routes);
    }
    next
}

/// Plain forwarding to the Service's own port.
pub fn plain(service: &ObjectRef, port: u16) -> ServiceRoutes {
    ServiceRoutes {
        service: service.clone(),
        port,
        http: Vec::new(),
        default_cluster: ClusterKey {
            service: service.clone(),
            port,
            subset: None,
            view: None,
        },
        export: Export::default(),
    }
}
