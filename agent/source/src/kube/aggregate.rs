//! The Kubernetes source's state: the converted objects of every watched kind, kept up to date
//! from watch events, and the [`ClusterModel`] they make.
//!
//! Pure (no API calls, no clock): the watch tasks feed it [`Change`]s, the publisher asks it for
//! the model. The rules:
//! - **Last good object.** An object whose new version does not convert (a VirtualService with a
//!   bad regex, say) keeps its previous version in the model, and the error is reported until the
//!   object is fixed or deleted.
//! - **Relists replace atomically.** After a watch restarts (410 Gone, an API server restart, a
//!   dropped connection) the watcher lists again: `Init`, `InitApply`s, `InitDone`. The listed
//!   objects are buffered and swapped in at `InitDone`, so the model never shows a half-listed
//!   kind, and objects deleted while the watch was down disappear then.
//! - **Nothing before every kind is listed.** [`Aggregate::synced`] is false until each kind has
//!   been listed once (or is known not to be served, for the Istio kinds when no CRD is
//!   installed): a model with Services but not yet their EndpointSlices would flush backends.

use std::collections::{BTreeMap, BTreeSet};

use meshpath_model::{ClusterModel, ObjectRef};

use crate::error::{ObjectKind, SourceError};
use crate::manifests::ParsedObject;

/// Every kind the Kubernetes source watches.
pub const KINDS: [ObjectKind; 7] = [
    ObjectKind::Service,
    ObjectKind::EndpointSlice,
    ObjectKind::Pod,
    ObjectKind::Namespace,
    ObjectKind::Node,
    ObjectKind::VirtualService,
    ObjectKind::DestinationRule,
];

/// One object as its watch task converted it.
#[derive(Debug)]
pub struct Item {
    pub id: ObjectRef,
    /// `Ok(None)`: valid, but nothing to program (a headless Service, an IPv6 slice).
    pub result: Result<Option<ParsedObject>, SourceError>,
}

/// What a watch task reports for its kind.
#[derive(Debug)]
pub enum Change {
    Apply(Item),
    Delete(ObjectRef),
    /// A (re)list starts.
    Init,
    InitApply(Item),
    /// The list is complete.
    InitDone,
    /// The kind is not served by this API server (an Istio CRD that is not installed): it is
    /// empty, and counts as listed.
    Absent,
}

#[derive(Debug, Default)]
struct KindState {
    listed: bool,
    /// Objects of a relist in progress.
    buffer: Option<Vec<Item>>,
    errors: BTreeMap<ObjectRef, SourceError>,
}

#[derive(Debug, Default)]
pub struct Aggregate {
    kinds: BTreeMap<ObjectKind, KindState>,
    model: ClusterModel,
    /// Whether the model changed since [`Aggregate::take_dirty`] was last called.
    dirty: bool,
}

impl Aggregate {
    /// Applies one change of `kind`.
    pub fn apply(&mut self, kind: ObjectKind, change: Change) {
        match change {
            Change::Apply(item) => self.upsert(kind, item),
            Change::Delete(id) => {
                self.remove(kind, &id);
                self.state(kind).errors.remove(&id);
            }
            Change::Init => self.state(kind).buffer = Some(Vec::new()),
            Change::InitApply(item) => match &mut self.state(kind).buffer {
                Some(buffer) => buffer.push(item),
                // kube's watcher always sends Init first; be lenient if it did not.
                None => self.upsert(kind, item),
            },
            Change::InitDone => {
                let listed = self.state(kind).buffer.take().unwrap_or_default();
                self.replace_all(kind, listed);
                self.state(kind).listed = true;
            }
            Change::Absent => {
                self.replace_all(kind, Vec::new());
                let state = self.state(kind);
                state.buffer = None;
                state.listed = true;
            }
        }
    }

    /// Whether every kind has been listed at least once.
    pub fn synced(&self) -> bool {
        KINDS
            .iter()
            .all(|k| self.kinds.get(k).is_some_and(|s| s.listed))
    }

    pub fn model(&self) -> &ClusterModel {
        &self.model
    }

    /// Whether the model changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The current errors, by kind then object.
    pub fn errors(&self) -> impl Iterator<Item = &SourceError> {
        self.kinds.values().flat_map(|s| s.errors.values())
    }

    /// Objects in the model.
    pub fn objects(&self) -> usize {
        let m = &self.model;
        m.services.len()
            + m.external_names.len()
            + m.endpoint_slices.len()
            + m.pods.len()
            + m.virtual_services.len()
            + m.destination_rules.len()
    }

    fn state(&mut self, kind: ObjectKind) -> &mut KindState {
        self.kinds.entry(kind).or_default()
    }

    fn upsert(&mut self, kind: ObjectKind, item: Item) {
        match item.result {
            Ok(Some(object)) => {
                self.state(kind).errors.remove(&item.id);
                self.insert(object);
            }
            Ok(None) => {
                self.state(kind).errors.remove(&item.id);
                self.remove(kind, &item.id);
            }
            // The last good version (if any) stays in the model.
            Err(e) => {
                self.state(kind).errors.insert(item.id, e);
            }
        }
    }

    /// A complete list of `kind`: objects not in it are gone, and so are their errors.
    fn replace_all(&mut self, kind: ObjectKind, listed: Vec<Item>) {
        let keep: BTreeSet<ObjectRef> = listed.iter().map(|i| i.id.clone()).collect();
        for id in self.ids(kind) {
            if !keep.contains(&id) {
                self.remove(kind, &id);
            }
        }
        self.state(kind).errors.retain(|id, _| keep.contains(id));
        for item in listed {
            self.upsert(kind, item);
        }
    }

    fn ids(&self, kind: ObjectKind) -> Vec<ObjectRef> {
        let m = &self.model;
        match kind {
            ObjectKind::Service => m
                .services
                .keys()
                .chain(m.external_names.keys())
                .cloned()
                .collect(),
            ObjectKind::EndpointSlice => m.endpoint_slices.keys().cloned().collect(),
            ObjectKind::Pod => m.pods.keys().cloned().collect(),
            ObjectKind::Namespace => m.namespaces.keys().cloned().collect(),
            ObjectKind::Node => m.nodes.keys().cloned().collect(),
            ObjectKind::VirtualService => m.virtual_services.keys().cloned().collect(),
            ObjectKind::DestinationRule => m.destination_rules.keys().cloned().collect(),
        }
    }

    fn insert(&mut self, object: ParsedObject) {
        let m = &mut self.model;
        let changed = match object {
            ParsedObject::Service(s) => {
                // A Service may change type: drop what it was before.
                let was_alias = m.external_names.remove(&s.id).is_some();
                replace(&mut m.services, s.id.clone(), s) | was_alias
            }
            ParsedObject::ExternalName(id, name) => {
                let was_service = m.services.remove(&id).is_some();
                replace(&mut m.external_names, id, name) | was_service
            }
            ParsedObject::EndpointSlice(s) => replace(&mut m.endpoint_slices, s.id.clone(), s),
            ParsedObject::Pod(p) => replace(&mut m.pods, p.id.clone(), p),
            ParsedObject::Namespace(n) => replace(&mut m.namespaces, n.id.clone(), n),
            ParsedObject::Node(n) => replace(&mut m.nodes, n.id.clone(), n),
            ParsedObject::VirtualService(v) => replace(&mut m.virtual_services, v.id.clone(), v),
            ParsedObject::DestinationRule(d) => replace(&mut m.destination_rules, d.id.clone(), *d),
        };
        self.dirty |= changed;
    }

    fn remove(&mut self, kind: ObjectKind, id: &ObjectRef) {
        let m = &mut self.model;
        let removed = match kind {
            ObjectKind::Service => {
                m.services.remove(id).is_some() | m.external_names.remove(id).is_some()
            }
            ObjectKind::EndpointSlice => m.endpoint_slices.remove(id).is_some(),
            ObjectKind::Pod => m.pods.remove(id).is_some(),
            ObjectKind::Namespace => m.namespaces.remove(id).is_some(),
            ObjectKind::Node => m.nodes.remove(id).is_some(),
            ObjectKind::VirtualService => m.virtual_services.remove(id).is_some(),
            ObjectKind::DestinationRule => m.destination_rules.remove(id).is_some(),
        };
        self.dirty |= removed;
    }
}

/// Inserts `value`; whether the map changed (an unchanged resync is not a change).
fn replace<V: PartialEq>(map: &mut BTreeMap<ObjectRef, V>, id: ObjectRef, value: V) -> bool {
    match map.get(&id) {
        Some(old) if *old == value => false,
        _ => {
            map.insert(id, value);
            true
        }
    }
}

#[cfg(test)]
mod tests;
