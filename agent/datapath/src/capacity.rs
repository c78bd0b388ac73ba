//! How many frontends, backends and service entries the kernel maps hold. The object defines
//! each map for the 10 000-Service scale (`meshpath_common`'s constants); the loader resizes
//! them from the agent's flags, so a larger cluster gets larger maps without a new object, and
//! a small node need not pay for the maximum. Arrays and preallocated hash maps cost their full
//! size in kernel memory whatever they hold: the per-CPU service stats 40 B × frontends × CPUs.

use meshpath_common::{
    MAP_BACKENDS, MAP_CONN_ACTIVE, MAP_CONN_MAX, MAP_RR, MAP_SERVICES, MAP_SVC_BACKENDS,
    MAP_SVC_NAMES, MAP_SVC_STATS, MAX_BACKENDS, MAX_SERVICE_ENTRIES, MAX_SERVICE_IDS,
};

/// The maps' capacities. `Default` is the object's own sizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapCapacity {
    /// Service ids (ClusterIP:port frontends, ids `1..frontends`): the per-service arrays.
    pub frontends: u32,
    /// Backend ids (`1..=backends`): the backend map.
    pub backends: u32,
    /// Service map entries: one per frontend plus one per backend slot of each frontend.
    pub service_entries: u32,
}

impl Default for MapCapacity {
    fn default() -> Self {
        Self {
            frontends: MAX_SERVICE_IDS,
            backends: MAX_BACKENDS,
            service_entries: MAX_SERVICE_ENTRIES,
        }
    }
}

impl MapCapacity {
    /// Each resized map and its size.
    pub fn sizes(&self) -> [(&'static str, u32); 8] {
        [
            (MAP_SERVICES, self.service_entries),
            (MAP_SVC_BACKENDS, self.service_entries),
            (MAP_BACKENDS, self.backends),
            (MAP_RR, self.frontends),
            (MAP_SVC_STATS, self.frontends),
            (MAP_SVC_NAMES, self.frontends),
            (MAP_CONN_MAX, self.frontends),
            (MAP_CONN_ACTIVE, self.frontends),
        ]
    }

    /// The size of map `name`: its resized one, else `defined` (the object's).
    pub fn size_of(&self, name: &str, defined: u32) -> u32 {
        self.sizes()
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(defined, |(_, size)| *size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_objects_sizing_and_other_maps_keep_theirs() {
        let c = MapCapacity::default();
        assert_eq!(c.size_of(MAP_RR, 7), MAX_SERVICE_IDS);
        assert_eq!(c.size_of(MAP_SERVICES, 7), MAX_SERVICE_ENTRIES);
        assert_eq!(c.size_of("MP_AFFINITY", 7), 7);
        let big = MapCapacity {
            frontends: 65_536,
            backends: 524_288,
            service_entries: 1_048_576,
        };
        assert_eq!(big.size_of(MAP_SVC_STATS, 7), 65_536);
        assert_eq!(big.size_of(MAP_BACKENDS, 7), 524_288);
        assert_eq!(big.size_of(MAP_SVC_BACKENDS, 7), 1_048_576);
    }
}
