//! The node proxy's listening sockets in `MP_PROXY_SOCKS`: connect4 steers a frontend to its
//! proxy listener only while that listener is in the sockhash. The agent inserts a listener
//! right after opening it; nobody deletes: the kernel drops a socket from every sockhash when
//! it is closed, so the entry goes exactly when the proxy stops accepting there, whether the
//! agent drained, crashed or was killed.

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::path::Path;

use aya::maps::{Map, MapData, SockHash};
use meshpath_common::{ipv4_be, port_be, Backend, MAP_PROXY_SOCKS, PROTO_TCP};

use super::DatapathError;

/// The key of a TCP proxy listener: its address, as the backends map holds it.
pub fn listener_key(addr: SocketAddrV4) -> Backend {
    Backend {
        ip_be: ipv4_be(addr.ip().octets()),
        port_be: port_be(addr.port()),
        proto: PROTO_TCP,
        _pad0: 0,
    }
}

pub struct ProxySockets {
    map: SockHash<MapData, Backend>,
}

impl ProxySockets {
    /// The pinned sockhash of `pin_dir` (the agent's datapath must have loaded it).
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, DatapathError> {
        let name = MAP_PROXY_SOCKS;
        let path = pin_dir.join(name);
        if !path.exists() {
            return Err(DatapathError::MissingMap {
                name,
                pin_dir: pin_dir.to_path_buf(),
            });
        }
        let data =
            MapData::from_pin(&path).map_err(|source| DatapathError::Map { name, source })?;
        let map = Map::from_map_data(data)
            .and_then(SockHash::try_from)
            .map_err(|source| DatapathError::Map { name, source })?;
        Ok(Self { map })
    }

    /// Puts a listening socket in the sockhash under its address (replacing a stale entry).
    pub fn insert(
        &mut self,
        addr: SocketAddrV4,
        listener: &impl AsRawFd,
    ) -> Result<(), DatapathError> {
        self.map
            .insert(listener_key(addr), listener.as_raw_fd(), 0)
            .map_err(|source| DatapathError::Map {
                name: MAP_PROXY_SOCKS,
                source,
            })
    }

    /// Takes a listener off the sockhash (it keeps listening): the first step of a drain.
    pub fn remove(&mut self, addr: SocketAddrV4) -> Result<(), DatapathError> {
        self.map
            .remove(&listener_key(addr))
            .map_err(|source| DatapathError::Map {
                name: MAP_PROXY_SOCKS,
                source,
            })
    }

    /// The addresses a proxy socket listens on right now.
    pub fn listening(&self) -> HashSet<Backend> {
        self.map.keys().filter_map(Result::ok).collect()
    }
}
