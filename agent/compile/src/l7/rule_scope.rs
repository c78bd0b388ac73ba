//! Which DestinationRule a client sees for a Service, as Istio's sidecar scope picks it for
//! the client's namespace (`exportTo` included):
//! 1. the rules of the client's own namespace that are visible there (no `exportTo`, `*`, `.`
//!    or the namespace itself), whatever Service namespace they name; a client in the root
//!    namespace looks only at the root namespace's private rules here;
//! 2. else the rules of the Service's namespace exported to the client's (not private-only);
//! 3. else the rules of the root namespace (`istio-system`) exported to the client's.
//!
//! Within one step, the most specific host wins (exact, then the longest wildcard), then
//! namespace/name order (Istio: the oldest). A client whose namespace is unknown sees what a
//! namespace without rules and named by no `exportTo` would: steps 2 and 3, public rules only.
//!
//! The kernel path cannot tell clients apart, so it follows that default view; the proxy
//! serves the other views through listener chains ([`expand`]) whose clusters name the rule
//! ([`RuleView`]).

use std::collections::{BTreeMap, BTreeSet};

use meshpath_model::istio::hosts;
use meshpath_model::istio::model::DestinationRule;
use meshpath_model::l7::{self, ClusterKey, RuleView, ServiceRoutes};
use meshpath_model::{ClusterModel, ObjectRef};

/// Istio's default `meshConfig.rootNamespace`.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// The DestinationRule views of every Service some rule names.
#[derive(Default)]
pub struct Scopes<'a> {
    /// The rule a client of unknown namespace sees (the kernel's view too).
    default: BTreeMap<ObjectRef, &'a DestinationRule>,
    /// Per Service, the client namespaces that see another rule, or none.
    views: BTreeMap<ObjectRef, BTreeMap<String, RuleView>>,
}

/// A rule naming a Service, ranked: (wildcard, less specific, rule).
struct Candidate<'a> {
    wildcard: bool,
    specificity: usize,
    rule: &'a DestinationRule,
}

impl<'a> Scopes<'a> {
    pub fn new(model: &'a ClusterModel) -> Self {
        let mut by_service: BTreeMap<&ObjectRef, Vec<Candidate<'a>>> = BTreeMap::new();
        // Namespaces whose view can differ from the default: those with rules, those named.
        let mut namespaces: BTreeSet<&str> = BTreeSet::new();
        for rule in model.destination_rules.values() {
            namespaces.insert(&rule.id.namespace);
            namespaces.extend(rule.export_to.iter().flatten().map(String::as_str));
            let wildcard = hosts::is_wildcard(&rule.host);
            let services: Vec<&ObjectRef> = if wildcard {
                hosts::wildcard_matches(&rule.host, &model.services).collect()
            } else {
                hosts::resolve(&rule.host, &rule.id.namespace, &model.services)
                    .into_iter()
                    .collect()
            };
            if services.is_empty() {
                tracing::warn!(destination_rule = %rule.id, host = rule.host, origin = rule.origin.as_deref(),
                    "DestinationRule host names no Service; ignored");
            }
            for service in services {
                by_service.entry(service).or_default().push(Candidate {
                    wildcard,
                    specificity: hosts::specificity(&rule.host),
                    rule,
                });
            }
        }
        let mut out = Scopes::default();
        for (service, candidates) in by_service {
            let default = lookup(service, &candidates, None);
            if let Some(rule) = default {
                out.default.insert(service.clone(), rule);
            }
            let mut views = BTreeMap::new();
            for ns in &namespaces {
                let seen = lookup(service, &candidates, Some(ns));
                if seen.map(|r| &r.id) == default.map(|r| &r.id) {
                    continue;
                }
                let view = seen.map_or(RuleView::NoRule, |r| RuleView::Rule(r.id.clone()));
                tracing::debug!(service = %service, client_namespace = ns, view = ?view,
                    "clients of this namespace see another DestinationRule");
                views.insert((*ns).to_owned(), view);
            }
            // A rule no client sees (Istio would merge it with another of its namespace).
            for c in &candidates {
                let seen = default.is_some_and(|d| d.id == c.rule.id)
                    || views
                        .values()
                        .any(|v| v == &RuleView::Rule(c.rule.id.clone()));
                if !seen {
                    tracing::warn!(service = %service, destination_rule = %c.rule.id,
                        "another DestinationRule applies to this service first for every client; this one is ignored for it");
                }
            }
            if !views.is_empty() {
                out.views.insert(service.clone(), views);
            }
        }
        out
    }

    /// Whether every client sees the same rules.
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// The rule clients without a view of their own see.
    pub fn default_rule(&self, service: &ObjectRef) -> Option<&'a DestinationRule> {
        self.default.get(service).copied()
    }

    pub fn default_rules(&self) -> impl Iterator<Item = (&ObjectRef, &'a DestinationRule)> + '_ {
        self.default.iter().map(|(s, r)| (s, *r))
    }

    /// Whether some client sees a rule for `service` (its default, or a namespace's own).
    pub fn names(&self, service: &ObjectRef) -> bool {
        self.default.contains_key(service) || self.views.contains_key(service)
    }

    /// Every Service some client sees a rule for.
    pub fn named(&self) -> impl Iterator<Item = &ObjectRef> + '_ {
        let views = self.views.keys().filter(|s| !self.default.contains_key(*s));
        self.default.keys().chain(views)
    }

    /// The view of clients in `namespace`, when it is not the default.
    fn view(&self, service: &ObjectRef, namespace: &str) -> Option<&RuleView> {
        self.views.get(service)?.get(namespace)
    }

    fn namespaces(&self) -> BTreeSet<&str> {
        self.views
            .values()
            .flat_map(|v| v.keys().map(String::as_str))
            .collect()
    }
}

/// The rule clients without a view of their own see for `service` (as [`Scopes::new`] finds
/// it, for this one Service: O(rules)), and whether clients of some namespace see another one.
pub fn service_rule<'a>(
    model: &'a ClusterModel,
    service: &ObjectRef,
) -> (Option<&'a DestinationRule>, bool) {
    let fqdn = hosts::fqdn(service);
    let mut namespaces: BTreeSet<&str> = BTreeSet::new();
    let mut candidates = Vec::new();
    for rule in model.destination_rules.values() {
        namespaces.insert(&rule.id.namespace);
        namespaces.extend(rule.export_to.iter().flatten().map(String::as_str));
        let wildcard = hosts::is_wildcard(&rule.host);
        let names = if wildcard {
            let tail = rule.host.strip_prefix('*').unwrap_or(&rule.host);
            model.services.contains_key(service) && (tail.is_empty() || fqdn.ends_with(tail))
        } else {
            hosts::resolve(&rule.host, &rule.id.namespace, &model.services) == Some(service)
        };
        if names {
            candidates.push(Candidate {
                wildcard,
                specificity: hosts::specificity(&rule.host),
                rule,
            });
        }
    }
    let default = lookup(service, &candidates, None);
    let views = namespaces
        .iter()
        .any(|ns| lookup(service, &candidates, Some(ns)).map(|r| &r.id) != default.map(|r| &r.id));
    (default, views)
}

/// Istio's lookup (see the module doc) among the rules naming `service`.
fn lookup<'a>(
    service: &ObjectRef,
    candidates: &[Candidate<'a>],
    client: Option<&str>,
) -> Option<&'a DestinationRule> {
    let best = |keep: &dyn Fn(&DestinationRule) -> bool| {
        candidates
            .iter()
            .filter(|c| keep(c.rule))
            .min_by(|a, b| {
                (a.wildcard, std::cmp::Reverse(a.specificity), &a.rule.id).cmp(&(
                    b.wildcard,
                    std::cmp::Reverse(b.specificity),
                    &b.rule.id,
                ))
            })
            .map(|c| c.rule)
    };
    let exported_to_client = |r: &DestinationRule| match (&r.export_to, client) {
        (None, _) => true,
        (Some(to), Some(ns)) => !private_only(r) && to.contains(ns),
        (Some(_), None) => false,
    };
    let local = client.and_then(|ns| {
        if ns == ROOT_NAMESPACE {
            best(&|r| r.id.namespace == ns && private_only(r))
        } else {
            best(&|r| r.id.namespace == ns && visible_at_home(r))
        }
    });
    local
        .or_else(|| best(&|r| r.id.namespace == service.namespace && exported_to_client(r)))
        .or_else(|| best(&|r| r.id.namespace == ROOT_NAMESPACE && exported_to_client(r)))
}

/// Exported to its own namespace only (`.` or the namespace itself, alone).
fn private_only(r: &DestinationRule) -> bool {
    r.export_to
        .as_ref()
        .is_some_and(|to| to.len() == 1 && to.contains(&r.id.namespace))
}

/// Visible to clients of its own namespace.
fn visible_at_home(r: &DestinationRule) -> bool {
    r.export_to
        .as_ref()
        .is_none_or(|to| to.contains(&r.id.namespace))
}

/// `routes` (a listener's chain) with, before each of its entries, one entry per group of
/// client namespaces that see other DestinationRules for the Services the entry sends to: the
/// same routes, with clusters that name the rule those clients see. Clients outside every
/// group walk on to the entry itself.
pub fn expand(mut routes: ServiceRoutes, scopes: &Scopes<'_>) -> ServiceRoutes {
    if scopes.views.is_empty() {
        return routes;
    }
    let rest = routes.export.otherwise.take();
    let services: BTreeSet<ObjectRef> = super::routes::own_cluster_keys(&routes)
        .into_iter()
        .map(|k| k.service)
        .collect();
    let mut groups: BTreeMap<Vec<(ObjectRef, RuleView)>, BTreeSet<String>> = BTreeMap::new();
    for ns in scopes.namespaces() {
        if routes.export.to.as_ref().is_some_and(|to| !to.contains(ns)) {
            continue;
        }
        let seen: Vec<(ObjectRef, RuleView)> = services
            .iter()
            .filter_map(|s| Some((s.clone(), scopes.view(s, ns)?.clone())))
            .collect();
        if !seen.is_empty() {
            groups.entry(seen).or_default().insert(ns.to_owned());
        }
    }
    let base = routes.clone();
    routes.export.otherwise = rest.map(|next| Box::new(expand(*next, scopes)));
    let mut chain = routes;
    for (seen, namespaces) in groups.into_iter().rev() {
        let mut variant = base.clone();
        let views: BTreeMap<ObjectRef, RuleView> = seen.into_iter().collect();
        for_each_key(&mut variant, &mut |key| {
            if let Some(view) = views.get(&key.service) {
                key.view = Some(view.clone());
            }
        });
        variant.export.to = Some(namespaces);
        variant.export.otherwise = Some(Box::new(chain));
        chain = variant;
    }
    chain
}

/// Every cluster key of one chain entry (not the entries after it).
fn for_each_key(routes: &mut ServiceRoutes, f: &mut impl FnMut(&mut ClusterKey)) {
    f(&mut routes.default_cluster);
    for r in &mut routes.http {
        if let l7::RouteAction::Route(w) = &mut r.action {
            w.iter_mut().for_each(|w| f(&mut w.cluster));
        }
        r.mirrors.iter_mut().for_each(|m| f(&mut m.cluster));
    }
}
