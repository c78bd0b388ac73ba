//! What socket redirection's opt-in scope reads: the opted-in pods' addresses and the cgroup
//! whose connects are the node proxy's (see the kernel side, `redirect.rs` of the eBPF crate).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use meshpath_common::{ipv4_be, MAP_REDIRECT_CGROUPS, MAP_REDIRECT_PODS};

use super::{DatapathError, DatapathMaps};

/// Makes the kernel's opted-in pod set `wanted`, changing only the difference from what the
/// map holds (read back, so a restarted agent also drops pods that left while it was away).
/// Returns (added, removed).
pub fn write_pods(
    maps: &mut DatapathMaps,
    wanted: &BTreeSet<Ipv4Addr>,
) -> Result<(usize, usize), DatapathError> {
    let err = |source| DatapathError::Map {
        name: MAP_REDIRECT_PODS,
        source,
    };
    let wanted_be: BTreeSet<u32> = wanted.iter().map(|ip| ipv4_be(ip.octets())).collect();
    let present: BTreeSet<u32> = maps
        .redirect_pods
        .keys()
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let mut removed = 0;
    for ip in present.difference(&wanted_be) {
        maps.redirect_pods.remove(ip).map_err(err)?;
        removed += 1;
    }
    let mut added = 0;
    for ip in wanted_be.difference(&present) {
        maps.redirect_pods.insert(ip, 1, 0).map_err(err)?;
        added += 1;
    }
    Ok((added, removed))
}

/// Lets connects from `cgroup_id` (the agent's own: the node proxy's connections to backends)
/// be redirected in the opt-in scope; forgets every other cgroup a previous agent named. `None`
/// only forgets them.
pub fn set_own_cgroup(
    maps: &mut DatapathMaps,
    cgroup_id: Option<u64>,
) -> Result<(), DatapathError> {
    let err = |source| DatapathError::Map {
        name: MAP_REDIRECT_CGROUPS,
        source,
    };
    let present: Vec<u64> = maps
        .redirect_cgroups
        .keys()
        .collect::<Result<_, _>>()
        .map_err(err)?;
    for id in present.into_iter().filter(|id| Some(*id) != cgroup_id) {
        maps.redirect_cgroups.remove(&id).map_err(err)?;
    }
    match cgroup_id {
        Some(id) => maps.redirect_cgroups.insert(id, 1, 0).map_err(err),
        None => Ok(()),
    }
}

/// The node proxy's listener address range (its IP, its `--proxy-ports`), whose accepted
/// sockets are the proxy's own; `None` clears it (no proxy). Opened from the pin directory, as
/// the map is written once at start.
pub fn set_proxy_range(
    pin_dir: &std::path::Path,
    proxy: Option<(Ipv4Addr, (u16, u16))>,
) -> Result<(), DatapathError> {
    use aya::maps::{Array, Map, MapData};
    use meshpath_common::{
        MAP_REDIRECT_PROXY, REDIRECT_PROXY_IP, REDIRECT_PROXY_PORT_FIRST, REDIRECT_PROXY_PORT_LAST,
    };
    let name = MAP_REDIRECT_PROXY;
    let err = |source| DatapathError::Map { name, source };
    let data = MapData::from_pin(pin_dir.join(name)).map_err(err)?;
    let mut map: Array<MapData, u32> = Map::from_map_data(data)
        .map_err(err)?
        .try_into()
        .map_err(err)?;
    let (ip, first, last) = match proxy {
        Some((ip, (first, last))) => (ipv4_be(ip.octets()), u32::from(first), u32::from(last)),
        None => (0, 0, 0),
    };
    map.set(REDIRECT_PROXY_PORT_FIRST, first, 0).map_err(err)?;
    map.set(REDIRECT_PROXY_PORT_LAST, last, 0).map_err(err)?;
    map.set(REDIRECT_PROXY_IP, ip, 0).map_err(err)
}
