//! `exportTo` of VirtualServices: which client namespaces a listener's routes apply to, and
//! what the others get instead.

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
