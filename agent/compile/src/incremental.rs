//! Recompiling only the Services a change touched: the common change (an EndpointSlice edited, a
//! Service added or removed) costs what it touches, not the whole cluster.
//!
//! [`compile_changed`] updates a [`Compiled`] in place to exactly what [`compile`](super::compile)
//! would produce from the same model and previous result, and [`Scoped`] holds the map entries
//! of the touched frontends before and after, for the datapath's diff. Ids are allocated as the
//! full compile allocates them (lowest free first, services in name order, ports in order;
//! service ids of removed frontends free only from the next pass), so both paths give the same
//! bytes; a property test checks it over long random change sequences.
//!
//! What depends on more than a Service's own objects is not scoped, and the caller compiles
//! everything instead ([`Unscoped`]): allocated ClusterIPs (they depend on every Service's),
//! frontend conflicts and compile errors (last good state and who wins depend on name order),
//! and the Istio cases [`istio`] lists.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meshpath_model::{ChangeSet, ClusterModel, ObjectRef, SliceIndex, TargetPort};

use super::{
    backend_value, BackendAddr, CompileError, CompileOptions, Compiled, Frontend, FrontendAddr,
    MapContents,
};

/// Why a change was not compiled per Service.
#[derive(Debug, thiserror::Error)]
pub enum Unscoped {
    #[error("ClusterIPs allocated by the agent depend on every Service's")]
    AllocatedClusterIp,
    #[error("{service} claims {ip}:{port}, held by {other}")]
    Conflict {
        service: ObjectRef,
        other: ObjectRef,
        ip: std::net::Ipv4Addr,
        port: u16,
    },
    #[error("{service} does not compile")]
    CompileError {
        service: ObjectRef,
        #[source]
        source: Box<CompileError>,
    },
    #[error("no free {what} id")]
    OutOfIds { what: &'static str },
    #[error("VirtualService {vs} names Services by a wildcard host")]
    WildcardHost { vs: ObjectRef },
    #[error("{service} is named by a VirtualService")]
    NamedByVirtualService { service: ObjectRef },
    #[error("clients of some namespace see another DestinationRule for {service}")]
    RulePerClient { service: ObjectRef },
    #[error("{service}'s port {port} is or would be steered to the node proxy")]
    Steered { service: ObjectRef, port: u16 },
    #[error("the routing table routes to {service}'s cluster {port} from another entry (e.g. a VirtualService's last good routes)")]
    RoutedTo { service: ObjectRef, port: u16 },
}

/// Lowest-free-first ids, as [`super::alloc::IdAllocator`] hands them out, kept across passes.
#[derive(Clone, Debug, Default)]
struct FreeIds {
    /// Free ids below `high`.
    holes: BTreeSet<u32>,
    /// Every id from here on is free.
    high: u32,
    max: u32,
}

impl FreeIds {
    fn from_used(used: impl IntoIterator<Item = u32>, max: u32) -> Self {
        let used: BTreeSet<u32> = used.into_iter().collect();
        let high = used.last().map_or(1, |m| m + 1);
        let holes = (1..high).filter(|id| !used.contains(id)).collect();
        Self { holes, high, max }
    }

    fn available(&self) -> u64 {
        self.holes.len() as u64 + u64::from(self.max.saturating_sub(self.high - 1))
    }

    fn take(&mut self) -> Option<u32> {
        if let Some(id) = self.holes.pop_first() {
            return Some(id);
        }
        (self.high <= self.max).then(|| {
            self.high += 1;
            self.high - 1
        })
    }

    fn give_back(&mut self, id: u32) {
        if id + 1 == self.high {
            self.high = id;
            // Holes just below the new top are the top now.
            while self.high > 1 && self.holes.remove(&(self.high - 1)) {
                self.high -= 1;
            }
        } else {
            self.holes.insert(id);
        }
    }
}

/// What [`compile_changed`] needs besides the [`Compiled`] it updates: derived from it by
/// [`State::new`] after a full compile, then kept in step.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// How many frontends name each backend: its id is freed when none does.
    backend_refs: HashMap<BackendAddr, u32>,
    /// Each Service's frontends, so that a pass finds the changed ones without a scan.
    by_service: HashMap<ObjectRef, Vec<FrontendAddr>>,
    svc_ids: FreeIds,
    backend_ids: FreeIds,
}

impl State {
    /// The frontends `service` had at the last pass.
    pub fn frontends_of(&self, service: &ObjectRef) -> &[FrontendAddr] {
        self.by_service.get(service).map_or(&[], Vec::as_slice)
    }

    /// The state of `compiled`, with the id spaces `opts` gives the datapath.
    pub fn new(compiled: &Compiled, opts: &CompileOptions) -> Self {
        let mut backend_refs: HashMap<BackendAddr, u32> = HashMap::new();
        let mut by_service: HashMap<ObjectRef, Vec<FrontendAddr>> = HashMap::new();
        for (addr, f) in &compiled.frontends {
            for b in &f.backends {
                *backend_refs.entry(*b).or_default() += 1;
            }
            by_service.entry(f.service.clone()).or_default().push(*addr);
        }
        Self {
            backend_refs,
            by_service,
            svc_ids: FreeIds::from_used(
                compiled.frontends.values().map(|f| f.svc_id),
                opts.max_frontends.saturating_sub(1),
            ),
            backend_ids: FreeIds::from_used(
                compiled.backend_ids.values().copied(),
                opts.max_backends,
            ),
        }
    }
}

/// The frontends and backends one scoped pass replaced.
#[derive(Debug, Default)]
pub struct Delta {
    /// Every frontend the changed services had before the pass.
    pub old: BTreeMap<FrontendAddr, Frontend>,
    /// Every frontend the changed services have now (in the updated [`Compiled`]).
    pub new: BTreeSet<FrontendAddr>,
    /// Backends no frontend names any more, with their former ids.
    pub backends_gone: Vec<(u32, BackendAddr)>,
    /// Backends that got an id in this pass.
    pub backends_new: Vec<(u32, BackendAddr)>,
}

/// The Services a change set touches: its own, and for each changed Pod the Services of the
/// Pod's namespace with a named targetPort (which an endpoint's Pod resolves when its slice does
/// not name the port).
pub fn touched_services(model: &ClusterModel, changes: &ChangeSet) -> BTreeSet<ObjectRef> {
    let mut out = changes.services.clone();
    let namespaces: BTreeSet<&str> = changes.pods.iter().map(|p| p.namespace.as_str()).collect();
    for ns in namespaces {
        let named = model
            .services
            .range(ObjectRef::new(ns, "")..)
            .take_while(|(id, _)| id.namespace == ns)
            .filter(|(_, s)| {
                s.ports
                    .iter()
                    .any(|p| matches!(p.target_port, TargetPort::Name(_)))
            });
        out.extend(named.map(|(id, _)| id.clone()));
    }
    out
}

/// Recompiles the services in `changed` (present in `model` or deleted from it) into `compiled`.
/// On `Err` nothing was changed, and the caller compiles everything instead.
pub fn compile_changed(
    model: &ClusterModel,
    opts: &CompileOptions,
    compiled: &mut Compiled,
    state: &mut State,
    changed: &BTreeSet<ObjectRef>,
) -> Result<Delta, Unscoped> {
    let plan = plan_changed(model, opts, compiled, state, changed)?;
    Ok(plan.apply(compiled, state, changed))
}

/// The changed Services compiled and checked against everything that could make the full
/// compile decide differently, not applied yet: a caller may still decline (e.g. when the node
/// proxy would have to take one of them) and leave every state as it was.
#[derive(Debug)]
pub struct Plan {
    fresh: Vec<(FrontendAddr, Frontend)>,
    old_addrs: Vec<FrontendAddr>,
    /// Backend references after the pass, for the backends whose count changes.
    refs: BTreeMap<BackendAddr, u32>,
    gone: Vec<(u32, BackendAddr)>,
    added: Vec<BackendAddr>,
}

/// The first half of [`compile_changed`]: nothing is changed, whatever it returns.
pub fn plan_changed(
    model: &ClusterModel,
    opts: &CompileOptions,
    compiled: &Compiled,
    state: &State,
    changed: &BTreeSet<ObjectRef>,
) -> Result<Plan, Unscoped> {
    if !compiled.allocated_ips.is_empty() {
        return Err(Unscoped::AllocatedClusterIp);
    }
    // 1. Compile the changed services, checking everything that could make the full compile
    //    decide differently, before touching any state.
    let slices = SliceIndex::for_services(model, changed);
    let mut fresh: Vec<(FrontendAddr, Frontend)> = Vec::new();
    let mut claimed: BTreeMap<FrontendAddr, &ObjectRef> = BTreeMap::new();
    for id in changed {
        let Some(svc) = model.services.get(id) else {
            continue;
        };
        let ip = svc.cluster_ip.ok_or(Unscoped::AllocatedClusterIp)?;
        let frontends = super::compile_service(model, &slices, opts, svc, ip).map_err(|e| {
            Unscoped::CompileError {
                service: id.clone(),
                source: e,
            }
        })?;
        for (addr, fe) in frontends {
            let other = claimed.insert(addr, id).cloned().or_else(|| {
                compiled
                    .frontends
                    .get(&addr)
                    .filter(|f| !changed.contains(&f.service))
                    .map(|f| f.service.clone())
            });
            if let Some(other) = other {
                return Err(Unscoped::Conflict {
                    service: id.clone(),
                    other,
                    ip: addr.ip,
                    port: addr.port,
                });
            }
            fresh.push((addr, fe));
        }
    }
    let old_addrs: Vec<FrontendAddr> = changed
        .iter()
        .filter_map(|s| state.by_service.get(s))
        .flatten()
        .copied()
        .collect();
    let new_svc_ids = fresh
        .iter()
        .filter(|(a, _)| !compiled.frontends.contains_key(a))
        .count();
    if (new_svc_ids as u64) > state.svc_ids.available() {
        return Err(Unscoped::OutOfIds { what: "service" });
    }
    // Backend references after the pass, for the backends whose count changes.
    let mut refs: BTreeMap<BackendAddr, u32> = BTreeMap::new();
    let count = |refs: &mut BTreeMap<BackendAddr, u32>, b: &BackendAddr| -> u32 {
        *refs
            .entry(*b)
            .or_insert_with(|| state.backend_refs.get(b).copied().unwrap_or(0))
    };
    for addr in &old_addrs {
        for b in &compiled.frontends[addr].backends {
            count(&mut refs, b);
            *refs.get_mut(b).expect("just counted") -= 1;
        }
    }
    for (_, fe) in &fresh {
        for b in &fe.backends {
            count(&mut refs, b);
            *refs.get_mut(b).expect("just counted") += 1;
        }
    }
    let gone: Vec<(u32, BackendAddr)> = refs
        .iter()
        .filter(|(_, n)| **n == 0)
        .filter_map(|(b, _)| compiled.backend_ids.get(b).map(|id| (*id, *b)))
        .collect();
    let added: Vec<BackendAddr> = refs
        .iter()
        .filter(|(b, n)| **n > 0 && !compiled.backend_ids.contains_key(b))
        .map(|(b, _)| *b)
        .collect();
    if added.len() as u64 > state.backend_ids.available() + gone.len() as u64 {
        return Err(Unscoped::OutOfIds { what: "backend" });
    }
    Ok(Plan {
        fresh,
        old_addrs,
        refs,
        gone,
        added,
    })
}

impl Plan {
    /// The changed Services' frontends as they compile now (ids not assigned yet).
    pub fn fresh(&self) -> &[(FrontendAddr, Frontend)] {
        &self.fresh
    }

    /// The frontends the changed Services had before.
    pub fn old_addrs(&self) -> &[FrontendAddr] {
        &self.old_addrs
    }

    /// The second half of [`compile_changed`], which cannot fail: `compiled` and `state` must
    /// be the ones [`plan_changed`] read, and `changed` the same set.
    pub fn apply(
        self,
        compiled: &mut Compiled,
        state: &mut State,
        changed: &BTreeSet<ObjectRef>,
    ) -> Delta {
        let Plan {
            fresh,
            old_addrs,
            refs,
            gone,
            added,
        } = self;
        let mut delta = Delta::default();
        for addr in old_addrs {
            let fe = compiled.frontends.remove(&addr).expect("listed above");
            delta.old.insert(addr, fe);
        }
        // As the full compile: a frontend keeps its address's id, a new one takes the lowest id
        // free, and ids of frontends removed now stay taken until the next pass.
        for id in changed {
            state.by_service.remove(id);
        }
        for (addr, mut fe) in fresh {
            fe.svc_id = match delta.old.get(&addr) {
                Some(before) => before.svc_id,
                None => state.svc_ids.take().expect("counted above"),
            };
            delta.new.insert(addr);
            state
                .by_service
                .entry(fe.service.clone())
                .or_default()
                .push(addr);
            compiled.frontends.insert(addr, fe);
        }
        for (addr, fe) in &delta.old {
            if !delta.new.contains(addr) {
                state.svc_ids.give_back(fe.svc_id);
            }
        }
        // Backends: freed ids first, so that new backends (in address order) reuse them, as the
        // full compile, which keeps the ids of used backends only, would.
        for (id, b) in &gone {
            compiled.backend_ids.remove(b);
            state.backend_ids.give_back(*id);
        }
        for b in added {
            let id = state.backend_ids.take().expect("counted above");
            compiled.backend_ids.insert(b, id);
            delta.backends_new.push((id, b));
        }
        for (b, n) in refs {
            if n == 0 {
                state.backend_refs.remove(&b);
            } else {
                state.backend_refs.insert(b, n);
            }
        }
        delta.backends_gone = gone;
        delta
    }
}

/// The map entries of one scoped pass: `previous` is what the maps hold for the touched
/// frontends and backends (taken from the last applied contents), `desired` what they should
/// hold. The datapath's apply diffs the two as it diffs whole contents.
#[derive(Debug, Default)]
pub struct Scoped {
    pub previous: MapContents,
    pub desired: MapContents,
}

impl Scoped {
    /// `compiled` is after [`compile_changed`], `applied` the contents last written (before).
    /// Only for frontends that are neither steered nor weighted, and without route limits:
    /// the caller checks that none are in use.
    pub fn new(compiled: &Compiled, applied: &MapContents, delta: &Delta) -> Self {
        let mut desired = compiled.frontend_contents(&delta.new);
        desired.backends = delta
            .backends_new
            .iter()
            .map(|(id, b)| (*id, backend_value(b)))
            .collect();
        let mut previous = MapContents::default();
        for (addr, fe) in &delta.old {
            let base = super::service_key(addr);
            let Some(header) = applied.services.get(&base) else {
                continue;
            };
            previous.services.insert(base, *header);
            for slot in 1..=header.count {
                let key = base.with_slot(slot);
                if let Some(v) = applied.services.get(&key) {
                    previous.services.insert(key, *v);
                }
            }
            if let Some(name) = applied.names.get(&fe.svc_id) {
                previous.names.insert(fe.svc_id, *name);
            }
            if let Some(max) = applied.conn_limits.get(&fe.svc_id) {
                previous.conn_limits.insert(fe.svc_id, *max);
            }
        }
        for (id, _) in &delta.backends_gone {
            if let Some(b) = applied.backends.get(id) {
                previous.backends.insert(*id, *b);
            }
        }
        Self { previous, desired }
    }

    /// Brings `applied` to what the maps hold after this pass was written.
    pub fn patch(&self, applied: &mut MapContents) {
        for key in self.previous.services.keys() {
            applied.services.remove(key);
        }
        for id in self.previous.names.keys() {
            applied.names.remove(id);
        }
        for id in self.previous.conn_limits.keys() {
            applied.conn_limits.remove(id);
        }
        for id in self.previous.backends.keys() {
            applied.backends.remove(id);
        }
        applied.services.extend(&self.desired.services);
        applied.names.extend(&self.desired.names);
        applied.conn_limits.extend(&self.desired.conn_limits);
        applied.backends.extend(&self.desired.backends);
    }
}

pub mod istio;
pub mod l7;
#[cfg(test)]
mod tests;
