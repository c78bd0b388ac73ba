//! Istio's TCP metrics as the kernel counts them (see `meshpath_common::tcp_metrics`): the switch
//! the programs read, and a reader the admin listener keeps open across scrapes (opening pinned
//! maps costs syscalls per map, so it is done once).

use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuHashMap};
pub use meshpath_common::TcpFlowStats;
use meshpath_common::{
    ipv4_octets, port_host, ServiceName, TcpFlowKey, CONFIG_TCP_METRICS, MAP_CONFIG, MAP_SVC_NAMES,
    MAP_TCP_FLOWS,
};

use super::DatapathError;

/// Writes `MP_CONFIG[CONFIG_TCP_METRICS]`: off or on.
pub fn write_switch(config: &mut Array<MapData, u32>, on: bool) -> Result<(), DatapathError> {
    config
        .set(CONFIG_TCP_METRICS, u32::from(on), 0)
        .map_err(|source| DatapathError::Map {
            name: MAP_CONFIG,
            source,
        })
}

/// One workload pair's totals, summed over CPUs, with its frontend's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowTotals {
    pub client: Ipv4Addr,
    pub backend: Ipv4Addr,
    pub backend_port: u16,
    /// `namespace/name:port` of the frontend, when the names map has it.
    pub service: Option<String>,
    pub stats: TcpFlowStats,
}

/// Open handles on the pinned pair table and the service names.
pub struct TcpMetricsReader {
    flows: PerCpuHashMap<MapData, TcpFlowKey, TcpFlowStats>,
    names: HashMap<MapData, u32, ServiceName>,
}

impl TcpMetricsReader {
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            flows: open(pin_dir, MAP_TCP_FLOWS)?,
            names: open(pin_dir, MAP_SVC_NAMES)?,
        })
    }

    /// Every pair's totals. A pair is never removed by the kernel, so its counters only grow.
    pub fn read(&self) -> Result<Vec<FlowTotals>, DatapathError> {
        let map_err = |source| DatapathError::Map {
            name: MAP_TCP_FLOWS,
            source,
        };
        let mut out = Vec::new();
        for entry in self.flows.iter() {
            let (key, per_cpu) = entry.map_err(map_err)?;
            let stats = per_cpu.iter().fold(TcpFlowStats::default(), |mut acc, s| {
                acc.opened += s.opened;
                acc.closed += s.closed;
                acc.sent_bytes += s.sent_bytes;
                acc.received_bytes += s.received_bytes;
                acc
            });
            let service = self
                .names
                .get(&key.svc_id, 0)
                .ok()
                .map(|n| n.as_str().to_owned());
            out.push(FlowTotals {
                client: Ipv4Addr::from(ipv4_octets(key.client_ip_be)),
                backend: Ipv4Addr::from(ipv4_octets(key.backend_ip_be)),
                backend_port: port_host(key.backend_port_be),
                service,
                stats,
            });
        }
        Ok(out)
    }
}

fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<T, DatapathError> {
    let path = pin_dir.join(name);
    if !path.exists() {
        return Err(DatapathError::MissingMap {
            name,
            pin_dir: pin_dir.to_path_buf(),
        });
    }
    let data = MapData::from_pin(&path).map_err(|source| DatapathError::Map { name, source })?;
    Map::from_map_data(data)
        .map_err(|source| DatapathError::Map { name, source })?
        .try_into()
        .map_err(|source| DatapathError::Map { name, source })
}
