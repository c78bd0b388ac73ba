//! Typed handles on the tc path's maps, and making `MP_TC_SVC` hold exactly what the compiler
//! rendered (`meshpath_compile::external`). Kept apart from [`crate::maps::DatapathMaps`]'s
//! required maps: pins left by an agent older than the tc path lack them, and `meshpath status`
//! must still read those.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use meshpath_common::tc::{
    CtKey, CtValue, TcReason, TcSlot, MAP_TC_COUNTERS, MAP_TC_CT, MAP_TC_NODE_IPS, MAP_TC_SERVICES,
    TC_ANY_NODE_IP,
};
use meshpath_common::{ipv4_be, ServiceKey};
use meshpath_compile::external::TcContents;

#[derive(Debug, thiserror::Error)]
pub enum TcMapError {
    #[error("tc map {map}: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
}

fn err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> TcMapError {
    move |source| TcMapError::Map { map, op, source }
}

pub struct TcMaps {
    pub services: HashMap<MapData, ServiceKey, TcSlot>,
    /// `MP_TC_CT`: `None` in pins older than the userspace sweep.
    pub ct: Option<HashMap<MapData, CtKey, CtValue>>,
    pub node_ips: HashMap<MapData, u32, u32>,
    pub counters: PerCpuArray<MapData, u64>,
}

impl TcMaps {
    /// The three maps from `get` (a loaded object or the pin directory); `None` when any is
    /// missing or of another type (an object built before the tc path).
    pub(crate) fn from_maps<E>(
        mut get: impl FnMut(&'static str) -> Result<Map, E>,
    ) -> Option<Self> {
        Some(Self {
            services: get(MAP_TC_SERVICES).ok()?.try_into().ok()?,
            ct: get(MAP_TC_CT).ok().and_then(|m| m.try_into().ok()),
            node_ips: get(MAP_TC_NODE_IPS).ok()?.try_into().ok()?,
            counters: get(MAP_TC_COUNTERS).ok()?.try_into().ok()?,
        })
    }

    /// Every tc reason's count, summed over CPUs. Reasons past the end of the pinned array (an
    /// older agent's, until the next start replaces it) are left out, not an error.
    pub fn reason_counts(&self) -> Result<Vec<(TcReason, u64)>, TcMapError> {
        TcReason::ALL
            .iter()
            .filter_map(|r| match self.counters.get(&(*r as u32), 0) {
                Ok(per_cpu) => Some(Ok((*r, per_cpu.iter().sum()))),
                Err(MapError::OutOfBounds { .. }) => None,
                Err(e) => Some(Err(err(MAP_TC_COUNTERS, "read")(e))),
            })
            .collect()
    }

    /// Makes the node-address set exactly `ips`; the first is the primary address, which
    /// flows to another node's endpoint through an external IP are source-NATed to (stored
    /// under `TC_ANY_NODE_IP`, a key no packet carries).
    pub fn set_node_ips(&mut self, ips: &[Ipv4Addr]) -> Result<(), TcMapError> {
        let wanted: Vec<u32> = ips.iter().map(|ip| ipv4_be(ip.octets())).collect();
        for ip in &wanted {
            self.node_ips
                .insert(ip, 1, 0)
                .map_err(err(MAP_TC_NODE_IPS, "insert"))?;
        }
        if let Some(primary) = wanted.first() {
            self.node_ips
                .insert(TC_ANY_NODE_IP, primary, 0)
                .map_err(err(MAP_TC_NODE_IPS, "insert"))?;
        }
        let stale: Vec<u32> = self
            .node_ips
            .keys()
            .filter_map(Result::ok)
            .filter(|k| *k != TC_ANY_NODE_IP && !wanted.contains(k))
            .collect();
        for k in stale {
            self.node_ips
                .remove(&k)
                .map_err(err(MAP_TC_NODE_IPS, "remove"))?;
        }
        Ok(())
    }

    /// Forgets the flows whose backend `desired` no longer has (and closed or idle ones):
    /// their next segment is refused by the program (see [`crate::tc_ct`]).
    pub fn forget_departed(
        &mut self,
        desired: &TcContents,
    ) -> Result<crate::tc_ct::Swept, crate::tc_ct::TcCtError> {
        let Some(ct) = self.ct.as_mut() else {
            return Ok(Default::default());
        };
        let live: crate::tc_ct::LiveBackends = desired
            .services
            .iter()
            .filter(|(k, _)| k.slot != 0)
            .map(|(_, s)| (s.svc_id, s.backend_ip_be, s.backend_port_be))
            .collect();
        crate::tc_ct::sweep(
            ct,
            crate::tc_ct::monotonic_ns(),
            &Default::default(),
            Some(&live),
        )
    }

    /// Makes `MP_TC_SVC` hold exactly `desired`, in an order a packet can never see a header
    /// promising a slot that is not written yet: slots, then headers, then what is no longer
    /// wanted (stale slots above a shrunk count last). Reads the map back rather than keeping the
    /// last write: external frontends are few, and a restart over pinned maps needs the read.
    pub fn apply(&mut self, desired: &TcContents) -> Result<usize, TcMapError> {
        let current: BTreeMap<ServiceKey, TcSlot> = self
            .services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(err(MAP_TC_SERVICES, "iterate"))?;
        let mut changes = 0;
        let (headers, slots): (Vec<_>, Vec<_>) =
            desired.services.iter().partition(|(k, _)| k.slot == 0);
        for (key, value) in slots.into_iter().chain(headers) {
            if current.get(key) != Some(value) {
                self.services
                    .insert(key, value, 0)
                    .map_err(err(MAP_TC_SERVICES, "insert"))?;
                changes += 1;
            }
        }
        let mut stale: Vec<&ServiceKey> = current
            .keys()
            .filter(|k| !desired.services.contains_key(k))
            .collect();
        // Headers first: a removed frontend stops matching before its slots go.
        stale.sort_by_key(|k| k.slot != 0);
        for key in stale {
            self.services
                .remove(key)
                .map_err(err(MAP_TC_SERVICES, "remove"))?;
            changes += 1;
        }
        Ok(changes)
    }
}
