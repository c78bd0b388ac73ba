//! The (service id, backend id) membership set the programs check a remembered choice against
//! (session affinity, UDP stickiness) before using it: see `meshpath_common::sticky`. Pairs are
//! added before the slots that name them and removed after the last slot naming them is gone, so
//! a choice is never dropped while its backend still serves the service.

use std::collections::BTreeSet;

use aya::maps::MapError;
use meshpath_common::{
    ServiceKey, ServiceValue, SvcBackendKey, MAP_SVC_BACKENDS, NO_ENDPOINT_BACKEND_ID,
};
use meshpath_compile::MapContents;

use crate::apply::ApplyError;
use crate::DatapathMaps;

/// Every pair the slots of `contents` name.
pub fn pairs(contents: &MapContents) -> BTreeSet<SvcBackendKey> {
    pairs_of(contents.services.iter())
}

fn pairs_of<'a>(
    services: impl Iterator<Item = (&'a ServiceKey, &'a ServiceValue)>,
) -> BTreeSet<SvcBackendKey> {
    services
        .filter(|(k, v)| k.slot != 0 && v.backend_id != NO_ENDPOINT_BACKEND_ID)
        .map(|(_, v)| SvcBackendKey {
            svc_id: v.svc_id,
            backend_id: v.backend_id,
        })
        .collect()
}

/// What the map holds now: `previous`'s pairs when the caller knows nothing else wrote it,
/// otherwise read back.
pub fn current(
    maps: &DatapathMaps,
    previous: Option<&MapContents>,
) -> Result<BTreeSet<SvcBackendKey>, ApplyError> {
    match previous {
        Some(p) => Ok(pairs(p)),
        None => maps
            .svc_backends
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err("iterate")),
    }
}

/// Adds the pairs `desired` has and `current` lacks. A full map fails the apply (the agent
/// reports and retries), never silently.
pub fn add(
    maps: &mut DatapathMaps,
    desired: &BTreeSet<SvcBackendKey>,
    current: &BTreeSet<SvcBackendKey>,
) -> Result<usize, ApplyError> {
    let added = desired.difference(current).map(|p| (*p, 1));
    crate::batch::insert_all(&mut maps.svc_backends, added).map_err(map_err("insert"))
}

/// Removes the pairs `current` has and `desired` lacks.
pub fn remove_stale(
    maps: &mut DatapathMaps,
    desired: &BTreeSet<SvcBackendKey>,
    current: &BTreeSet<SvcBackendKey>,
) -> Result<usize, ApplyError> {
    let mut n = 0;
    for pair in current.difference(desired) {
        match maps.svc_backends.remove(pair) {
            Ok(()) | Err(MapError::KeyNotFound) => n += 1,
            Err(e) => return Err(map_err("remove")(e)),
        }
    }
    Ok(n)
}

fn map_err(op: &'static str) -> impl FnOnce(MapError) -> ApplyError {
    move |source| ApplyError::Map {
        map: MAP_SVC_BACKENDS,
        op,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_come_from_slots_only() {
        let key = |slot| ServiceKey::new(1, 80, 6, slot);
        let val = |backend_id| ServiceValue {
            backend_id,
            count: 2,
            flags: 0,
            policy: 0,
            svc_id: 7,
            affinity_timeout_sec: 0,
            backend: meshpath_common::Backend::NONE,
        };
        let entries = [(key(0), val(99)), (key(1), val(3)), (key(2), val(3))];
        let got = pairs_of(entries.iter().map(|(k, v)| (k, v)));
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![SvcBackendKey {
                svc_id: 7,
                backend_id: 3
            }]
        );
    }
}
