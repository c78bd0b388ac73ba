//! Typed handles on the datapath maps, from a freshly loaded object or from the pin directory
//! (`meshpath status` reads them that way, with or without a running agent).

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use meshpath_common::{
    AffinityKey, AffinityValue, Backend, Reason, ServiceKey, ServiceName, ServiceStats,
    ServiceValue, MAP_AFFINITY, MAP_BACKENDS, MAP_COUNTERS, MAP_SERVICES, MAP_SVC_NAMES,
    MAP_SVC_STATS,
};

use super::DatapathError;

pub struct DatapathMaps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub counters: PerCpuArray<MapData, u64>,
    pub svc_stats: PerCpuArray<MapData, ServiceStats>,
    pub names: HashMap<MapData, u32, ServiceName>,
}

impl DatapathMaps {
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self, DatapathError> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or(DatapathError::MissingMap {
                name,
                pin_dir: PathBuf::new(),
            })
        };
        Self::from_maps(
            take(MAP_SERVICES)?,
            take(MAP_BACKENDS)?,
            take(MAP_AFFINITY)?,
            take(MAP_COUNTERS)?,
            take(MAP_SVC_STATS)?,
            take(MAP_SVC_NAMES)?,
        )
    }

    pub fn open_pinned(pin_dir: &Path) -> Result<Self, DatapathError> {
        let open = |name: &'static str| {
            let path = pin_dir.join(name);
            if !path.exists() {
                return Err(DatapathError::MissingMap {
                    name,
                    pin_dir: pin_dir.to_path_buf(),
                });
            }
            let data =
                MapData::from_pin(&path).map_err(|source| DatapathError::Map { name, source })?;
            Map::from_map_data(data).map_err(|source| DatapathError::Map { name, source })
        };
        Self::from_maps(
            open(MAP_SERVICES)?,
            open(MAP_BACKENDS)?,
            open(MAP_AFFINITY)?,
            open(MAP_COUNTERS)?,
            open(MAP_SVC_STATS)?,
            open(MAP_SVC_NAMES)?,
        )
    }

    fn from_maps(
        services: Map,
        backends: Map,
        affinity: Map,
        counters: Map,
        svc_stats: Map,
        names: Map,
    ) -> Result<Self, DatapathError> {
        let typed = |name: &'static str| move |source| DatapathError::Map { name, source };
        Ok(Self {
            services: services.try_into().map_err(typed(MAP_SERVICES))?,
            backends: backends.try_into().map_err(typed(MAP_BACKENDS))?,
            affinity: affinity.try_into().map_err(typed(MAP_AFFINITY))?,
            counters: counters.try_into().map_err(typed(MAP_COUNTERS))?,
            svc_stats: svc_stats.try_into().map_err(typed(MAP_SVC_STATS))?,
            names: names.try_into().map_err(typed(MAP_SVC_NAMES))?,
        })
    }

    /// Every reason's count, summed over CPUs.
    pub fn reason_counts(&self) -> Result<Vec<(Reason, u64)>, DatapathError> {
        Reason::ALL
            .iter()
            .map(|r| {
                let per_cpu =
                    self.counters
                        .get(&(*r as u32), 0)
                        .map_err(|source| DatapathError::Map {
                            name: MAP_COUNTERS,
                            source,
                        })?;
                Ok((*r, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// A service id's stats, summed over CPUs.
    pub fn service_stats(&self, svc_id: u32) -> Result<ServiceStats, DatapathError> {
        let per_cpu = self
            .svc_stats
            .get(&svc_id, 0)
            .map_err(|source| DatapathError::Map {
                name: MAP_SVC_STATS,
                source,
            })?;
        Ok(per_cpu.iter().fold(ServiceStats::default(), |mut acc, s| {
            acc.connects += s.connects;
            acc.datagrams += s.datagrams;
            acc.no_backend += s.no_backend;
            acc.affinity_hits += s.affinity_hits;
            acc
        }))
    }
}
