//! Which Service an Istio host names, resolved the way Kubernetes DNS and Istio resolve it: a
//! short name in the namespace of the object that wrote it, and `name.ns`, `name.ns.svc`,
//! `name.ns.svc.cluster.local` anywhere. Wildcards (`*.ns.svc.cluster.local`, `*`) name every
//! Service whose FQDN they cover.

use std::collections::BTreeMap;

use crate::{ObjectRef, Service};

/// The cluster DNS domain. Kubernetes lets clusters change it; none of our users has.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The Service an exact (non-wildcard) host names, if it is one of `services`. `namespace` is the
/// namespace of the VirtualService or DestinationRule the host is written in.
pub fn resolve<'a>(
    host: &str,
    namespace: &str,
    services: &'a BTreeMap<ObjectRef, std::sync::Arc<Service>>,
) -> Option<&'a ObjectRef> {
    let id = candidate(host, namespace)?;
    services.get_key_value(&id).map(|(k, _)| k)
}

/// The namespace/name a host would be, before looking it up.
pub fn candidate(host: &str, namespace: &str) -> Option<ObjectRef> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let labels: Vec<&str> = host.split('.').collect();
    let suffix = format!("svc.{CLUSTER_DOMAIN}");
    match labels.as_slice() {
        [name] => Some(ObjectRef::new(namespace, *name)),
        [name, ns] => Some(ObjectRef::new(*ns, *name)),
        [name, ns, "svc"] => Some(ObjectRef::new(*ns, *name)),
        [name, ns, rest @ ..] if rest.join(".") == suffix => Some(ObjectRef::new(*ns, *name)),
        _ => None,
    }
}

pub fn is_wildcard(host: &str) -> bool {
    host.starts_with('*')
}

/// How specific a host is, for Istio's "most specific host wins": the length of what a
/// wildcard fixes (`*.prod.svc.cluster.local` beats `*.svc.cluster.local` beats `*`); an exact
/// host beats every wildcard.
pub fn specificity(host: &str) -> usize {
    match host.strip_prefix('*') {
        Some(tail) => tail.len(),
        None => usize::MAX,
    }
}

/// The Services a wildcard host covers (compared against their FQDN).
pub fn wildcard_matches<'a>(
    host: &'a str,
    services: &'a BTreeMap<ObjectRef, std::sync::Arc<Service>>,
) -> impl Iterator<Item = &'a ObjectRef> + 'a {
    let tail = host.strip_prefix('*').unwrap_or(host);
    services
        .keys()
        .filter(move |id| tail.is_empty() || fqdn(id).ends_with(tail))
}

pub fn fqdn(id: &ObjectRef) -> String {
    format!("{}.{}.svc.{CLUSTER_DOMAIN}", id.name, id.namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(ids: &[(&str, &str)]) -> BTreeMap<ObjectRef, std::sync::Arc<Service>> {
        ids.iter()
            .map(|(ns, name)| {
                let id = ObjectRef::new(*ns, *name);
                let svc = Service {
                    id: id.clone(),
                    cluster_ip: None,
                    ports: Vec::new(),
                    selector: BTreeMap::new(),
                    session_affinity: None,
                    lb_policy: None,
                    labels: BTreeMap::new(),
                    origin: None,
                    external: Default::default(),
                };
                (id, std::sync::Arc::new(svc))
            })
            .collect()
    }

    #[test]
    fn every_form_of_a_service_host() {
        let svcs = services(&[("default", "reviews"), ("prod", "reviews")]);
        let r = |host, ns| resolve(host, ns, &svcs).map(ToString::to_string);
        assert_eq!(r("reviews", "default").as_deref(), Some("default/reviews"));
        assert_eq!(r("reviews", "prod").as_deref(), Some("prod/reviews"));
        assert_eq!(r("reviews", "other"), None);
        assert_eq!(
            r("reviews.prod", "default").as_deref(),
            Some("prod/reviews")
        );
        assert_eq!(
            r("reviews.prod.svc", "default").as_deref(),
            Some("prod/reviews")
        );
        assert_eq!(
            r("reviews.prod.svc.cluster.local", "default").as_deref(),
            Some("prod/reviews")
        );
        assert_eq!(
            r("reviews.prod.svc.cluster.local.", "default").as_deref(),
            Some("prod/reviews")
        );
        assert_eq!(r("reviews.prod.svc.example.org", "default"), None);
        assert_eq!(r("www.example.com", "default"), None);
    }

    #[test]
    fn wildcards_cover_fqdns() {
        let svcs = services(&[("default", "a"), ("prod", "b"), ("prod", "c")]);
        let m = |host| {
            wildcard_matches(host, &svcs)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(m("*.prod.svc.cluster.local"), ["prod/b", "prod/c"]);
        assert_eq!(m("*"), ["default/a", "prod/b", "prod/c"]);
        assert!(m("*.example.com").is_empty());
        // Istio's wildcard label: `*-x` covers names ending in `-x`.
        let svcs = services(&[("prod", "api-v1"), ("prod", "apiv1"), ("dev", "web-v1")]);
        let m = |host| {
            wildcard_matches(host, &svcs)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(m("*-v1.prod.svc.cluster.local"), ["prod/api-v1"]);
    }

    #[test]
    fn the_most_specific_host_ranks_first() {
        assert!(specificity("reviews") > specificity("*.prod.svc.cluster.local"));
        assert!(specificity("*.prod.svc.cluster.local") > specificity("*.svc.cluster.local"));
        assert!(specificity("*.svc.cluster.local") > specificity("*"));
    }
}
