//! Pinned maps left by an agent whose maps were defined differently (an upgrade that changed a
//! capacity, a key or a value): aya reuses a pinned map by name without comparing its
//! definition, so the new programs would run against a map of the wrong size. Such pins are
//! unpinned before loading, so fresh maps are created in their place. Programs of the previous
//! agent keep their own references to the old maps and keep serving until the new programs
//! replace their links (`links::attach_replacing`); what the old maps held (counters,
//! affinity, connection counts) starts afresh.

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya_obj::maps::PinningType;
use tracing::warn;

use super::DatapathError;

/// One pinned map that did not match the object's definition and was unpinned.
#[derive(Debug, PartialEq, Eq)]
pub struct Replaced {
    pub name: String,
    /// (key size, value size, max entries) pinned, then wanted.
    pub pinned: (u32, u32, u32),
    pub wanted: (u32, u32, u32),
}

/// Unpins every map under `pin_dir` whose definition differs from the one in `object`.
pub fn unpin_incompatible(object: &[u8], pin_dir: &Path) -> Result<Vec<Replaced>, DatapathError> {
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
        let pinned = (info.key_size(), info.value_size(), info.max_entries());
        let wanted = (map.key_size(), map.value_size(), map.max_entries());
        if pinned == wanted {
            continue;
        }
        std::fs::remove_file(&path).map_err(|source| DatapathError::Unpin {
            path: path.clone(),
            source,
        })?;
        warn!(map = %name, ?pinned, ?wanted, "pinned map had another definition (key, value, entries): unpinned, a new one replaces it");
        replaced.push(Replaced {
            name: name.clone(),
            pinned,
            wanted,
        });
    }
    replaced.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(replaced)
}
