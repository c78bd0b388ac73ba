//! Typed handles on the datapath maps, from a freshly loaded object or from the pin directory
//! (`meshpath status` reads them that way, with or without a running agent).

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, SockHash};
use meshpath_common::{
    AffinityKey, AffinityValue, Backend, Reason, ServiceKey, ServiceName, ServiceStats,
    ServiceValue, SockKey, SockLimit, SvcBackendKey, MAP_AFFINITY, MAP_BACKENDS, MAP_CONFIG,
    MAP_CONN_ACTIVE, MAP_CONN_MAX, MAP_COUNTERS, MAP_GRP_ACTIVE, MAP_GRP_MAX, MAP_GRP_NAMES,
    MAP_GRP_REFUSED, MAP_REDIRECT_CGROUPS, MAP_REDIRECT_PODS, MAP_SERVICES, MAP_SLOT_GRP,
    MAP_SOCKS, MAP_SVC_BACKENDS, MAP_SVC_NAMES, MAP_SVC_STATS,
};

use super::DatapathError;

pub struct DatapathMaps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub counters: PerCpuArray<MapData, u64>,
    pub svc_stats: PerCpuArray<MapData, ServiceStats>,
    pub names: HashMap<MapData, u32, ServiceName>,
    pub socks: SockHash<MapData, SockKey>,
    pub config: Array<MapData, u32>,
    /// service id → `maxConnections` (0 = none), written by `apply`.
    pub conn_max: Array<MapData, u32>,
    /// service id → active connections under a limit, kept by the programs.
    pub conn_active: Array<MapData, u64>,
    /// {frontend, slot} → the counter a routed slot's connects count against, written by `apply`.
    pub slot_limits: HashMap<MapData, ServiceKey, SockLimit>,
    /// group id → a route destination's `maxConnections` (0 = none), written by `apply`.
    pub grp_max: Array<MapData, u32>,
    /// group id → active connections, kept by the programs.
    pub grp_active: Array<MapData, u64>,
    /// group id → connects refused, per CPU.
    pub grp_refused: PerCpuArray<MapData, u64>,
    /// group id → the destination's cluster name, for `meshpath status`.
    pub grp_names: HashMap<MapData, u32, ServiceName>,
    /// {service id, backend id} pairs the slots name, written by `apply` (`members`).
    pub svc_backends: HashMap<MapData, SvcBackendKey, u8>,
    /// Opted-in pod IPs (network order) → 1, for socket redirection's opt-in scope.
    pub redirect_pods: HashMap<MapData, u32, u32>,
    /// cgroup ids whose connects may be redirected (the agent's own) → 1.
    pub redirect_cgroups: HashMap<MapData, u64, u32>,
    /// The tc path's maps; `None` in pins of an object built before it.
    pub tc: Option<crate::tc_maps::TcMaps>,
}

impl DatapathMaps {
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self, DatapathError> {
        Self::from_maps(|name| {
            ebpf.take_map(name).ok_or(DatapathError::MissingMap {
                name,
                pin_dir: PathBuf::new(),
            })
        })
    }

    pub fn open_pinned(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::from_maps(|name| {
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
        })
    }

    fn from_maps(
        mut get: impl FnMut(&'static str) -> Result<Map, DatapathError>,
    ) -> Result<Self, DatapathError> {
        fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
            name: &'static str,
            map: Result<Map, DatapathError>,
        ) -> Result<T, DatapathError> {
            map?.try_into()
                .map_err(|source| DatapathError::Map { name, source })
        }
        Ok(Self {
            services: typed(MAP_SERVICES, get(MAP_SERVICES))?,
            backends: typed(MAP_BACKENDS, get(MAP_BACKENDS))?,
            affinity: typed(MAP_AFFINITY, get(MAP_AFFINITY))?,
            counters: typed(MAP_COUNTERS, get(MAP_COUNTERS))?,
            svc_stats: typed(MAP_SVC_STATS, get(MAP_SVC_STATS))?,
            names: typed(MAP_SVC_NAMES, get(MAP_SVC_NAMES))?,
            socks: typed(MAP_SOCKS, get(MAP_SOCKS))?,
            config: typed(MAP_CONFIG, get(MAP_CONFIG))?,
            conn_max: typed(MAP_CONN_MAX, get(MAP_CONN_MAX))?,
            conn_active: typed(MAP_CONN_ACTIVE, get(MAP_CONN_ACTIVE))?,
            slot_limits: typed(MAP_SLOT_GRP, get(MAP_SLOT_GRP))?,
            grp_max: typed(MAP_GRP_MAX, get(MAP_GRP_MAX))?,
            grp_active: typed(MAP_GRP_ACTIVE, get(MAP_GRP_ACTIVE))?,
            grp_refused: typed(MAP_GRP_REFUSED, get(MAP_GRP_REFUSED))?,
            grp_names: typed(MAP_GRP_NAMES, get(MAP_GRP_NAMES))?,
            svc_backends: typed(MAP_SVC_BACKENDS, get(MAP_SVC_BACKENDS))?,
            redirect_pods: typed(MAP_REDIRECT_PODS, get(MAP_REDIRECT_PODS))?,
            redirect_cgroups: typed(MAP_REDIRECT_CGROUPS, get(MAP_REDIRECT_CGROUPS))?,
            tc: crate::tc_maps::TcMaps::from_maps(&mut get),
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
            acc.conn_limit_refused += s.conn_limit_refused;
            acc
        }))
    }

    /// A group's refusals, summed over CPUs.
    pub fn group_refused(&self, group_id: u32) -> Result<u64, DatapathError> {
        let per_cpu = self
            .grp_refused
            .get(&group_id, 0)
            .map_err(|source| DatapathError::Map {
                name: MAP_GRP_REFUSED,
                source,
            })?;
        Ok(per_cpu.iter().sum())
    }
}
