//! The slot layout of a frontend with VirtualService `tcp:` weights: shared by the map rendering
//! and the per-destination connection limits, which must agree on which slot is whose.

use std::collections::BTreeMap;

use super::BackendAddr;

/// Slots for weighted clusters: `weight` slots per cluster, over its endpoints in turn, each with
/// the index of its cluster in `weights`. Clusters without endpoints (or endpoints without a
/// backend id) get none: their share goes to the others, where Envoy would answer with a
/// connection failure. Slot `n` (1-based, as in the maps) is element `n - 1`.
pub fn slots<'a>(
    weights: &'a [(Vec<BackendAddr>, u32)],
    ids: &BTreeMap<BackendAddr, u32>,
) -> Vec<(usize, &'a BackendAddr)> {
    let mut slots = Vec::new();
    for (index, (endpoints, weight)) in weights.iter().enumerate() {
        let usable: Vec<&BackendAddr> = endpoints.iter().filter(|b| ids.contains_key(*b)).collect();
        if usable.is_empty() {
            continue;
        }
        slots.extend((0..*weight as usize).map(|i| (index, usable[i % usable.len()])));
    }
    slots
}
