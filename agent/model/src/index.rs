//! Lookups by Service that the Kubernetes source keeps in step with the model as it edits it,
//! so that a pass over a few changed Services does not scan every EndpointSlice of the cluster
//! to find theirs (nor every endpoint to learn whether an address is still listed).
//!
//! Derived data, not state: two models with the same objects are equal whatever their index
//! holds. A model built without it (the manifests source, tests) has none, and its readers
//! scan instead.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use crate::{EndpointSlice, ObjectRef};

#[derive(Clone, Debug, Default)]
pub struct ModelIndex {
    /// namespace/Service name → the ids of the EndpointSlices that name it, in name order.
    slices: HashMap<ObjectRef, BTreeSet<ObjectRef>>,
    /// Endpoint address → how many times the slices list it.
    addresses: HashMap<Ipv4Addr, u32>,
}

impl PartialEq for ModelIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ModelIndex {}

impl ModelIndex {
    /// Counts `slice` in (after it was inserted into the model).
    pub fn slice_added(&mut self, slice: &EndpointSlice) {
        self.slices
            .entry(ObjectRef::new(&slice.id.namespace, &slice.service_name))
            .or_default()
            .insert(slice.id.clone());
        for ip in slice.endpoints.iter().flat_map(|e| &e.addresses) {
            *self.addresses.entry(*ip).or_default() += 1;
        }
    }

    /// Counts `slice` out (after it was replaced or removed from the model).
    pub fn slice_removed(&mut self, slice: &EndpointSlice) {
        let service = ObjectRef::new(&slice.id.namespace, &slice.service_name);
        if let Some(ids) = self.slices.get_mut(&service) {
            ids.remove(&slice.id);
            if ids.is_empty() {
                self.slices.remove(&service);
            }
        }
        for ip in slice.endpoints.iter().flat_map(|e| &e.addresses) {
            if let Some(n) = self.addresses.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    self.addresses.remove(ip);
                }
            }
        }
    }

    /// The ids of the slices that serve `service`, in name order, with the index's own copy
    /// of the Service's id; `None` when no slice names it.
    pub fn slices_of(
        &self,
        service: &ObjectRef,
    ) -> Option<(&ObjectRef, impl Iterator<Item = &ObjectRef>)> {
        self.slices
            .get_key_value(service)
            .map(|(id, slices)| (id, slices.iter()))
    }

    /// Whether any slice lists `ip`, whatever the endpoint's conditions.
    pub fn lists(&self, ip: &Ipv4Addr) -> bool {
        self.addresses.contains_key(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Endpoint, EndpointConditions};

    fn slice(name: &str, service: &str, ips: &[[u8; 4]]) -> EndpointSlice {
        EndpointSlice {
            id: ObjectRef::new("ns", name),
            service_name: service.into(),
            ports: vec![],
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![Ipv4Addr::from(*ip)],
                    conditions: EndpointConditions::default(),
                    pod_name: None,
                    zone: None,
                    node_name: None,
                })
                .collect(),
        }
    }

    #[test]
    fn slices_and_addresses_are_counted_in_and_out() {
        let mut index = ModelIndex::default();
        let a = slice("web-b", "web", &[[10, 0, 0, 1], [10, 0, 0, 2]]);
        let b = slice("web-a", "web", &[[10, 0, 0, 2]]);
        index.slice_added(&a);
        index.slice_added(&b);
        let web = ObjectRef::new("ns", "web");
        let names: Vec<&str> = index
            .slices_of(&web)
            .into_iter()
            .flat_map(|(_, ids)| ids)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["web-a", "web-b"], "name order");
        index.slice_removed(&a);
        assert!(!index.lists(&Ipv4Addr::new(10, 0, 0, 1)));
        assert!(index.lists(&Ipv4Addr::new(10, 0, 0, 2)), "still in web-a");
        // The slice moves to another Service.
        index.slice_removed(&b);
        index.slice_added(&slice("web-a", "api", &[]));
        assert!(index.slices_of(&web).is_none());
        let api = index.slices_of(&ObjectRef::new("ns", "api"));
        assert_eq!(api.map(|(_, ids)| ids.count()), Some(1));
        assert!(!index.lists(&Ipv4Addr::new(10, 0, 0, 2)));
        assert!(!index.slices.contains_key(&web), "no empty entry left");
    }
}
