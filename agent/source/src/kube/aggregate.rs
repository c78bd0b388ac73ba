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
use std::sync::Arc;

use meshpath_model::{ChangeSet, ClusterModel, ObjectRef};

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
    /// Shared with the published snapshot when the publisher lends it back
    /// ([`Aggregate::model_arc`]): edited in place while no one else holds it, copied first
    /// otherwise. An event that changes nothing copies nothing. Every slice goes in and out
    /// through here, so the model's index (created with the first slice) lists them all.
    model: Arc<ClusterModel>,
    /// Whether the model changed since [`Aggregate::take_dirty`] was last called.
    dirty: bool,
    /// What changed since [`Aggregate::take_changes`] was last called.
    changes: ChangeSet,
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

    /// The model's handle, for the publisher to swap with the published snapshot's.
    pub fn model_arc(&mut self) -> &mut Arc<ClusterModel> {
        &mut self.model
    }

    /// Whether the model changed since [`Aggregate::take_dirty`] was last called.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Whether the model changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// What changed in the model since the last call.
    pub fn take_changes(&mut self) -> ChangeSet {
        std::mem::take(&mut self.changes)
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

    /// Whether the model holds `object` as it is (a resync, or an event for a version seen).
    fn unchanged(&self, object: &ParsedObject) -> bool {
        let m = &*self.model;
        match object {
            ParsedObject::Service(s) => {
                !m.external_names.contains_key(&s.id)
                    && m.services.get(&s.id).map(|v| &**v) == Some(s)
            }
            ParsedObject::ExternalName(id, name) => {
                !m.services.contains_key(id) && m.external_names.get(id) == Some(name)
            }
            ParsedObject::EndpointSlice(s) => m.endpoint_slices.get(&s.id).map(|v| &**v) == Some(s),
            ParsedObject::Pod(p) => m.pods.get(&p.id) == Some(p),
            ParsedObject::Namespace(n) => m.namespaces.get(&n.id) == Some(n),
            ParsedObject::Node(n) => m.nodes.get(&n.id) == Some(n),
            ParsedObject::VirtualService(v) => m.virtual_services.get(&v.id) == Some(v),
            ParsedObject::DestinationRule(d) => m.destination_rules.get(&d.id) == Some(&**d),
        }
    }

    fn contains(&self, kind: ObjectKind, id: &ObjectRef) -> bool {
        let m = &*self.model;
        match kind {
            ObjectKind::Service => m.services.contains_key(id) || m.external_names.contains_key(id),
            ObjectKind::EndpointSlice => m.endpoint_slices.contains_key(id),
            ObjectKind::Pod => m.pods.contains_key(id),
            ObjectKind::Namespace => m.namespaces.contains_key(id),
            ObjectKind::Node => m.nodes.contains_key(id),
            ObjectKind::VirtualService => m.virtual_services.contains_key(id),
            ObjectKind::DestinationRule => m.destination_rules.contains_key(id),
        }
    }

    fn insert(&mut self, object: ParsedObject) {
        // Checked first: taking the model for writing copies it if a snapshot still holds it.
        if self.unchanged(&object) {
            return;
        }
        let m = Arc::make_mut(&mut self.model);
        let c = &mut self.changes;
        let changed = match object {
            ParsedObject::Service(s) => {
                // A Service may change type: drop what it was before.
                let was_alias = m.external_names.remove(&s.id).is_some();
                c.everything |= was_alias;
                let id = s.id.clone();
                let changed =
                    replace(&mut m.services, s.id.clone(), Arc::new(s)).is_some() | was_alias;
                if changed {
                    c.services.insert(id);
                }
                changed
            }
            ParsedObject::ExternalName(id, name) => {
                let was_service = m.services.remove(&id).is_some();
                if was_service {
                    c.services.insert(id.clone());
                }
                let changed = replace(&mut m.external_names, id, name).is_some() | was_service;
                // Only the DNS proxy answers for these: not scoped to Services.
                c.everything |= changed;
                changed
            }
            ParsedObject::EndpointSlice(s) => {
                let service = ObjectRef::new(&s.id.namespace, &s.service_name);
                let id = s.id.clone();
                match replace(&mut m.endpoint_slices, s.id.clone(), Arc::new(s)) {
                    Some(old) => {
                        let index = m.index.get_or_insert_with(Default::default);
                        // The slice may have moved to another Service: both change.
                        if let Some(old) = old {
                            index.slice_removed(&old);
                            c.services
                                .insert(ObjectRef::new(&old.id.namespace, &old.service_name));
                        }
                        index.slice_added(&m.endpoint_slices[&id]);
                        c.services.insert(service);
                        true
                    }
                    None => false,
                }
            }
            ParsedObject::Pod(p) => {
                let id = p.id.clone();
                let changed = replace(&mut m.pods, p.id.clone(), p).is_some();
                if changed {
                    c.pods.insert(id);
                }
                changed
            }
            ParsedObject::Namespace(n) => unscoped(c, replace(&mut m.namespaces, n.id.clone(), n)),
            ParsedObject::VirtualService(v) => {
                unscoped(c, replace(&mut m.virtual_services, v.id.clone(), v))
            }
            ParsedObject::DestinationRule(d) => {
                let new = rule_target(&d);
                match replace(&mut m.destination_rules, d.id.clone(), *d) {
                    Some(old) => {
                        rule_changed(c, new, old.as_ref().map(rule_target));
                        true
                    }
                    None => false,
                }
            }
            // A node's labels are its endpoints' locality: every Service may change.
            ParsedObject::Node(n) => unscoped(c, replace(&mut m.nodes, n.id.clone(), n)),
        };
        self.dirty |= changed;
    }

    fn remove(&mut self, kind: ObjectKind, id: &ObjectRef) {
        if !self.contains(kind, id) {
            return;
        }
        let m = Arc::make_mut(&mut self.model);
        let c = &mut self.changes;
        let removed = match kind {
            ObjectKind::Service => {
                let service = m.services.remove(id).is_some();
                let alias = m.external_names.remove(id).is_some();
                if service {
                    c.services.insert(id.clone());
                }
                c.everything |= alias;
                service | alias
            }
            ObjectKind::EndpointSlice => match m.endpoint_slices.remove(id) {
                Some(old) => {
                    m.index
                        .get_or_insert_with(Default::default)
                        .slice_removed(&old);
                    c.services
                        .insert(ObjectRef::new(&old.id.namespace, &old.service_name));
                    true
                }
                None => false,
            },
            ObjectKind::Pod => {
                let removed = m.pods.remove(id).is_some();
                if removed {
                    c.pods.insert(id.clone());
                }
                removed
            }
            ObjectKind::Namespace => m.namespaces.remove(id).is_some(),
            ObjectKind::Node => m.nodes.remove(id).is_some(),
            ObjectKind::VirtualService => m.virtual_services.remove(id).is_some(),
            ObjectKind::DestinationRule => match m.destination_rules.remove(id) {
                Some(old) => {
                    rule_changed(c, rule_target(&old), None);
                    true
                }
                None => false,
            },
        };
        if matches!(
            kind,
            ObjectKind::Namespace | ObjectKind::Node | ObjectKind::VirtualService
        ) {
            c.everything |= removed;
        }
        self.dirty |= removed;
    }
}

/// The Service a DestinationRule's host names (whether or not it exists); `Err` for a
/// wildcard host, which names every Service it covers, those created later too.
fn rule_target(
    rule: &meshpath_model::istio::model::DestinationRule,
) -> Result<Option<ObjectRef>, ()> {
    use meshpath_model::istio::hosts;
    match hosts::is_wildcard(&rule.host) {
        true => Err(()),
        false => Ok(hosts::candidate(&rule.host, &rule.id.namespace)),
    }
}

/// A DestinationRule added, edited or deleted: the Services its old and new hosts name change
/// (the rule that applies to them, and with it their policy, limit and steering). Which rule
/// another Service's clients see does not depend on this one. A wildcard host changes
/// everything.
fn rule_changed(
    changes: &mut ChangeSet,
    new: Result<Option<ObjectRef>, ()>,
    old: Option<Result<Option<ObjectRef>, ()>>,
) {
    for target in std::iter::once(new).chain(old) {
        match target {
            Ok(service) => changes.services.extend(service),
            Err(()) => changes.everything = true,
        }
    }
}

/// A change the agent cannot scope to Services yet.
fn unscoped<V>(changes: &mut ChangeSet, replaced: Option<Option<V>>) -> bool {
    changes.everything |= replaced.is_some();
    replaced.is_some()
}

/// Inserts `value`: `None` when the map already held it (an unchanged resync is not a change),
/// else `Some` of the version it replaced, if any.
fn replace<V: PartialEq>(
    map: &mut BTreeMap<ObjectRef, V>,
    id: ObjectRef,
    value: V,
) -> Option<Option<V>> {
    match map.get(&id) {
        Some(old) if *old == value => None,
        _ => Some(map.insert(id, value)),
    }
}

#[cfg(test)]
mod tests;
