//! `exportTo` of VirtualServices and DestinationRules: which client namespaces a listener's
//! routes apply to, what the others get instead, and which DestinationRule a cluster follows.

use std::collections::BTreeSet;

use super::ServiceRoutes;
use crate::ObjectRef;

/// Where a [`ServiceRoutes`] comes from and whom it is for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Export {
    /// The VirtualService the routes are compiled from (`None`: plain forwarding).
    pub virtual_service: Option<ObjectRef>,
    /// The client namespaces (the calling pod's) the routes apply to; `None`: every client.
    pub to: Option<BTreeSet<String>>,
    /// What clients outside `to` get: the routes of the next VirtualService visible to them,
    /// else plain forwarding. Set whenever `to` is.
    pub otherwise: Option<Box<ServiceRoutes>>,
}

impl ServiceRoutes {
    /// The routes a client in `namespace` (`None`: unknown, e.g. not a pod) gets: the first of
    /// the chain exported to it.
    pub fn for_client(&self, namespace: Option<&str>) -> &ServiceRoutes {
        let mut routes = self;
        loop {
            let visible = match &routes.export.to {
                None => true,
                Some(to) => namespace.is_some_and(|ns| to.contains(ns)),
            };
            match (&routes.export.otherwise, visible) {
                (Some(next), false) => routes = next,
                _ => return routes,
            }
        }
    }
}

/// The DestinationRule a cluster follows for the clients that see another one than the rest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleView {
    Rule(ObjectRef),
    /// No DestinationRule is visible to these clients (plain endpoints, default policy).
    NoRule,
}

impl RuleView {
    /// How the cluster names a view: Istio's cluster names have no place for it, so it is
    /// appended (`|rule=<namespace>/<name>`, `|rule=none`) to keep the names of the clusters
    /// of one host apart.
    pub fn suffix(view: Option<&RuleView>) -> String {
        match view {
            None => String::new(),
            Some(RuleView::Rule(id)) => format!("|rule={id}"),
            Some(RuleView::NoRule) => "|rule=none".to_owned(),
        }
    }
}
