//! Pinned maps left by an agent whose maps were defined differently (an upgrade that changed a
//! capacity, a key, a value or the map's flags, such as preallocation): aya reuses a pinned map
//! by name without comparing its definition, so the new programs would run against a map of
//! the wrong size (or keep an old build's preallocated memory). Such pins are
//! unpinned before loading, so fresh maps are created in their place. Programs of the previous
//! agent keep their own references to the old maps and keep serving until the new programs
//! replace their links (`links::attach_replacing`); what the old maps held (counters,
//! affinity, connection counts) starts afresh.

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya_obj::maps::PinningType;
use tracing::warn;

use super::{DatapathError, MapCapacity};

/// What must match for a pinned map to be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapShape {
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// `BPF_F_*` creation flags: a preallocated map pinned by an older build is replaced by
    /// this build's allocate-on-insert one (and so frees its memory).
    pub flags: u32,
}

/// One pinned map that did not match the object's definition and was unpinned.
#[derive(Debug, PartialEq, Eq)]
pub struct Replaced {
    pub name: String,
    pub pinned: MapShape,
    pub wanted: MapShape,
}

/// Unpins every map under `pin_dir` whose definition differs from the one in `object` with the
/// sizes of `capacity`.
pub fn unpin_incompatible(
    object: &[u8],
    pin_dir: &Path,
    capacity: &MapCapacity,
) -> Result<Vec<Replaced>, DatapathError> {
    let parsed = aya_obj::Object::parse(object).map_err(|source| DatapathError::Parse {
        source: Box::new(source),
    })?;
    let mut replaced = Vec::new();
    for (name, map) in &parsed.maps {
        if map.pinning() != PinningType::ByName {
            continue;
        }
        let path: PathBuf = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue; // not a map, or unreadable: loading will report it
        };
        let pinned = MapShape {
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        };
        let wanted = MapShape {
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: capacity.size_of(name, map.max_entries()),
            flags: map.map_flags(),
        };
        if pinned == wanted {
            continue;
        }
        std::fs::remove_file(&path).map_err(|source| DatapathError::Unpin {
            path: path.clone(),
            source,
        })?;
        warn!(map = %name, ?pinned, ?wanted, "pinned map had another definition (key, value, entries or flags): unpinned, a new one replaces it");
        replaced.push(Replaced {
            name: name.clone(),
            pinned,
            wanted,
        });
    }
    forget_counted_flows(pin_dir, &replaced)?;
    replaced.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(replaced)
}

/// The tc path's record of counted flows holds slots of `MP_CONN_ACTIVE`: next to a fresh
/// counter (a replaced one starts at 0), releasing them would take it below 0, which wraps and
/// refuses every later connection of the Service. The records go with the counter.
fn forget_counted_flows(pin_dir: &Path, replaced: &[Replaced]) -> Result<(), DatapathError> {
    use meshpath_common::{tc::MAP_TC_COUNTED, MAP_CONN_ACTIVE};
    if !replaced.iter().any(|r| r.name == MAP_CONN_ACTIVE) {
        return Ok(());
    }
    let path = pin_dir.join(MAP_TC_COUNTED);
    if !path.exists() {
        return Ok(());
    }
    std::fs::remove_file(&path).map_err(|source| DatapathError::Unpin {
        path: path.clone(),
        source,
    })?;
    warn!(
        map = MAP_TC_COUNTED,
        "connection counter replaced: the tc path's counted flows start afresh with it"
    );
    Ok(())
}

/// Which per-socket maps were pinned before this load, for [`init_live`]; call after
/// [`unpin_incompatible`] and before loading.
pub struct LiveBefore {
    live: bool,
    tracked: bool,
    fallback: bool,
}

pub fn live_before(pin_dir: &Path) -> LiveBefore {
    use meshpath_common::{live::MAP_LIVE, MAP_SOCK_FALLBACK, MAP_SOCK_LIMIT};
    LiveBefore {
        live: pin_dir.join(MAP_LIVE).exists(),
        tracked: pin_dir.join(MAP_SOCK_LIMIT).exists(),
        fallback: pin_dir.join(MAP_SOCK_FALLBACK).exists(),
    }
}

/// A new `MP_LIVE` next to per-socket maps an older agent's programs filled without counting:
/// their entries are of unknown number, so the programs must keep looking them up (see
/// `meshpath_common::live`). A pinned `MP_LIVE` was kept by programs that count: left as it is.
pub fn init_live(ebpf: &mut aya::Ebpf, before: &LiveBefore) -> Result<(), DatapathError> {
    use meshpath_common::live::{LIVE_FALLBACK_MARKS, LIVE_TRACKED_SOCKS, LIVE_UNKNOWN, MAP_LIVE};
    if before.live {
        return Ok(());
    }
    let map = ebpf.map_mut(MAP_LIVE).ok_or(DatapathError::MissingMap {
        name: MAP_LIVE,
        pin_dir: PathBuf::new(),
    })?;
    let mut live: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(map).map_err(|source| DatapathError::Map {
            name: MAP_LIVE,
            source,
        })?;
    for (slot, unknown) in [
        (LIVE_TRACKED_SOCKS, before.tracked),
        (LIVE_FALLBACK_MARKS, before.fallback),
    ] {
        if unknown {
            live.set(slot, LIVE_UNKNOWN, 0)
                .map_err(|source| DatapathError::Map {
                    name: MAP_LIVE,
                    source,
                })?;
            warn!(
                slot,
                "per-socket map pinned by an earlier agent: its lookups stay on"
            );
        }
    }
    Ok(())
}
