//! The third step: make the maps hold exactly `MapContents`, touching only entries that differ, in
//! an order that never lets a reader see a header promising more slots than exist, or a slot
//! naming a backend that is not there yet.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{MapError, PerCpuValues};
use meshpath_common::{
    ServiceKey, ServiceName, ServiceStats, ServiceValue, SockLimit, MAP_BACKENDS, MAP_CONN_MAX,
    MAP_GRP_MAX, MAP_GRP_NAMES, MAP_GRP_REFUSED, MAP_SERVICES, MAP_SLOT_GRP, MAP_SVC_NAMES,
    MAP_SVC_STATS,
};

use meshpath_compile::MapContents;

use crate::batch::insert_all;
use crate::DatapathMaps;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("map {map}: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("counting possible CPUs for per-CPU map {map}")]
    Cpus {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What one apply changed, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub upserts: usize,
    pub deletes: usize,
    /// (service, backend) pairs added to and removed from the membership set.
    pub members_added: usize,
    pub members_removed: usize,
}

fn err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> ApplyError {
    move |source| ApplyError::Map { map, op, source }
}

/// `previous`: what the last successful apply wrote, when nothing else writes these maps since
/// (the reconciler passes it after a success and `None` after a failure or at start). The diff
/// is then taken against it instead of reading every entry back: at 10 000 Services that read
/// is some 400 000 syscalls per change. `None` reads the maps (a restart over pinned maps, a
/// half-done apply).
pub fn apply(
    maps: &mut DatapathMaps,
    desired: &MapContents,
    previous: Option<&MapContents>,
) -> Result<ApplyStats, ApplyError> {
    let mut stats = ApplyStats::default();
    let read_services;
    let read_backends;
    let read_names;
    let (current_services, current_backends, current_names) = match previous {
        Some(p) => (&p.services, &p.backends, &p.names),
        None => {
            read_services = maps
                .services
                .iter()
                .collect::<Result<BTreeMap<ServiceKey, ServiceValue>, _>>()
                .map_err(err(MAP_SERVICES, "iterate"))?;
            read_backends = maps
                .backends
                .iter()
                .collect::<Result<BTreeMap<u32, meshpath_common::Backend>, _>>()
                .map_err(err(MAP_BACKENDS, "iterate"))?;
            read_names = maps
                .names
                .iter()
                .collect::<Result<BTreeMap<u32, meshpath_common::ServiceName>, _>>()
                .map_err(err(MAP_SVC_NAMES, "iterate"))?;
            (&read_services, &read_backends, &read_names)
        }
    };

    // 1. Backends first: slots written below may name them.
    let changed = desired
        .backends
        .iter()
        .filter(|(id, b)| current_backends.get(id) != Some(b))
        .map(|(id, b)| (*id, *b));
    stats.upserts +=
        insert_all(&mut maps.backends, changed).map_err(err(MAP_BACKENDS, "insert"))?;

    // 1a. Membership pairs before the slots that name them (`members.rs`).
    let desired_members = crate::members::pairs(desired);
    let current_members = crate::members::current(maps, previous)?;
    stats.members_added = crate::members::add(maps, &desired_members, &current_members)?;

    // 1b. Route-destination limits before the slots and headers that use them (`limits.rs`).
    // Skipped when none were written before (by the caller's record) nor are wanted now:
    // walking even an empty hash map visits all its buckets, which costs a per-Service pass
    // more than its own writes.
    let limits_in_use = previous
        .is_none_or(|p| !p.slot_limits.is_empty() || !p.group_names.is_empty())
        || !desired.slot_limits.is_empty()
        || !desired.group_names.is_empty()
        || !desired.group_limits.is_empty();
    let current_slot_limits = match limits_in_use {
        true => upsert_route_limits(maps, desired, &mut stats)?,
        false => BTreeMap::new(),
    };

    // 2. Per frontend: slots, then the header, then slots beyond the new count.
    let current_ids: BTreeSet<u32> = current_services
        .iter()
        .filter(|(k, _)| k.slot == 0)
        .map(|(_, v)| v.svc_id)
        .collect();
    // All slots before any header (a batch writes its entries in order).
    let changed = |slots: bool| {
        desired
            .services
            .iter()
            .filter(move |(k, v)| (k.slot != 0) == slots && current_services.get(k) != Some(v))
            .map(|(k, v)| (*k, *v))
    };
    stats.upserts +=
        insert_all(&mut maps.services, changed(true)).map_err(err(MAP_SERVICES, "insert"))?;
    for (_, value) in changed(false) {
        if !current_ids.contains(&value.svc_id) {
            // A service id new to the maps may have been used by a frontend removed earlier.
            reset_service_stats(maps, value.svc_id)?;
        }
    }
    stats.upserts +=
        insert_all(&mut maps.services, changed(false)).map_err(err(MAP_SERVICES, "insert"))?;
    // 3. Stale entries: headers before their slots, so a reader sees "no service" or a full one.
    let mut stale: Vec<&ServiceKey> = current_services
        .keys()
        .filter(|k| !desired.services.contains_key(k))
        .collect();
    stale.sort_by_key(|k| k.slot != 0);
    for key in stale {
        maps.services
            .remove(key)
            .map_err(err(MAP_SERVICES, "remove"))?;
        stats.deletes += 1;
    }
    // 3a. Pairs no slot names any more: a remembered choice of them is dropped by the programs.
    stats.members_removed = crate::members::remove_stale(maps, &desired_members, &current_members)?;
    // 3b. Slot targets no slot has any more: after the headers that stopped using them.
    remove_stale_slot_limits(maps, desired, &current_slot_limits, &mut stats)?;
    // 4. Backends no slot names any more.
    for id in current_backends
        .keys()
        .filter(|id| !desired.backends.contains_key(id))
    {
        maps.backends
            .remove(id)
            .map_err(err(MAP_BACKENDS, "remove"))?;
        stats.deletes += 1;
    }
    // 5. Names, for `meshpath status`.
    let changed = desired
        .names
        .iter()
        .filter(|(id, name)| current_names.get(id) != Some(name))
        .map(|(id, name)| (*id, *name));
    insert_all(&mut maps.names, changed).map_err(err(MAP_SVC_NAMES, "insert"))?;
    for id in current_names
        .keys()
        .filter(|id| !desired.names.contains_key(id))
    {
        maps.names
            .remove(id)
            .map_err(err(MAP_SVC_NAMES, "remove"))?;
    }
    // 6. Kernel connection limits, for every service id in the maps now or before.
    let ids: BTreeSet<u32> = current_ids
        .iter()
        .copied()
        .chain(desired.names.keys().copied())
        .collect();
    for id in ids {
        let max = desired.conn_limits.get(&id).copied().unwrap_or(0);
        let now = match previous {
            Some(p) => p.conn_limits.get(&id).copied().unwrap_or(0),
            None => maps
                .conn_max
                .get(&id, 0)
                .map_err(err(MAP_CONN_MAX, "get"))?,
        };
        if now != max {
            maps.conn_max
                .set(id, max, 0)
                .map_err(err(MAP_CONN_MAX, "set"))?;
        }
    }
    if limits_in_use {
        remove_stale_groups(maps, desired)?;
    }
    Ok(stats)
}

fn reset_service_stats(maps: &mut DatapathMaps, svc_id: u32) -> Result<(), ApplyError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| ApplyError::Cpus {
        map: MAP_SVC_STATS,
        source,
    })?;
    let zeros = PerCpuValues::try_from(vec![ServiceStats::default(); cpus]).map_err(|source| {
        ApplyError::Cpus {
            map: MAP_SVC_STATS,
            source,
        }
    })?;
    maps.svc_stats
        .set(svc_id, zeros, 0)
        .map_err(err(MAP_SVC_STATS, "reset"))
}

/// Group limits and names, then slot targets: everything a routed slot names exists before a
/// header flags its frontend as routed. Returns the slot targets the map held before.
fn upsert_route_limits(
    maps: &mut DatapathMaps,
    desired: &MapContents,
    stats: &mut ApplyStats,
) -> Result<BTreeMap<ServiceKey, SockLimit>, ApplyError> {
    let current_names: BTreeMap<u32, ServiceName> = maps
        .grp_names
        .iter()
        .collect::<Result<_, _>>()
        .map_err(err(MAP_GRP_NAMES, "iterate"))?;
    for (id, name) in &desired.group_names {
        if current_names.get(id) == Some(name) {
            continue;
        }
        // A group id new to the maps (or now naming another destination) starts from zero
        // refusals. Its active count is the programs' alone: sockets still counted against a
        // reused id release it when they close.
        reset_group_refused(maps, *id)?;
        maps.grp_names
            .insert(id, name, 0)
            .map_err(err(MAP_GRP_NAMES, "insert"))?;
    }
    for (id, max) in &desired.group_limits {
        if maps.grp_max.get(id, 0).map_err(err(MAP_GRP_MAX, "get"))? != *max {
            maps.grp_max
                .set(*id, *max, 0)
                .map_err(err(MAP_GRP_MAX, "set"))?;
            stats.upserts += 1;
        }
    }
    let current: BTreeMap<ServiceKey, SockLimit> = maps
        .slot_limits
        .iter()
        .collect::<Result<_, _>>()
        .map_err(err(MAP_SLOT_GRP, "iterate"))?;
    for (key, target) in &desired.slot_limits {
        if current.get(key) != Some(target) {
            maps.slot_limits
                .insert(key, target, 0)
                .map_err(err(MAP_SLOT_GRP, "insert"))?;
            stats.upserts += 1;
        }
    }
    Ok(current)
}

fn remove_stale_slot_limits(
    maps: &mut DatapathMaps,
    desired: &MapContents,
    current: &BTreeMap<ServiceKey, SockLimit>,
    stats: &mut ApplyStats,
) -> Result<(), ApplyError> {
    for key in current
        .keys()
        .filter(|k| !desired.slot_limits.contains_key(k))
    {
        maps.slot_limits
            .remove(key)
            .map_err(err(MAP_SLOT_GRP, "remove"))?;
        stats.deletes += 1;
    }
    Ok(())
}

/// Groups no slot names any more: no limit (a connect cannot reach them now anyway), no name.
fn remove_stale_groups(maps: &mut DatapathMaps, desired: &MapContents) -> Result<(), ApplyError> {
    let stale: Vec<u32> = maps
        .grp_names
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(err(MAP_GRP_NAMES, "iterate"))?
        .into_iter()
        .filter(|id| !desired.group_names.contains_key(id))
        .collect();
    for id in stale {
        maps.grp_max
            .set(id, 0, 0)
            .map_err(err(MAP_GRP_MAX, "set"))?;
        maps.grp_names
            .remove(&id)
            .map_err(err(MAP_GRP_NAMES, "remove"))?;
    }
    Ok(())
}

fn reset_group_refused(maps: &mut DatapathMaps, id: u32) -> Result<(), ApplyError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| ApplyError::Cpus {
        map: MAP_GRP_REFUSED,
        source,
    })?;
    let zeros = PerCpuValues::try_from(vec![0u64; cpus]).map_err(|source| ApplyError::Cpus {
        map: MAP_GRP_REFUSED,
        source,
    })?;
    maps.grp_refused
        .set(id, zeros, 0)
        .map_err(err(MAP_GRP_REFUSED, "reset"))
}
