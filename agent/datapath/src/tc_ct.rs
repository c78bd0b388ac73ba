//! The userspace side of the tc path's conntrack (`MP_TC_CT`): entries the programs cannot
//! retire themselves. A flow whose backend left its Service is forgotten at once, so its next
//! segment is answered with a RST by the program instead of reaching a backend that no longer
//! serves it; a closed flow (FIN or RST seen) goes after a grace period for the last ACKs; an
//! idle one after a timeout per protocol. The LRU still evicts the oldest entries when full.

use std::collections::BTreeSet;
use std::time::Duration;

use aya::maps::{HashMap, MapData, MapError};
use meshpath_common::tc::{
    CtKey, CtValue, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_STATE_CLOSING, MAP_TC_CT,
};
use meshpath_common::PROTO_TCP;

#[derive(Debug, thiserror::Error)]
pub enum TcCtError {
    #[error("tc map {MAP_TC_CT}: {op} failed")]
    Map {
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("opening the pinned {MAP_TC_CT}")]
    Pin {
        #[source]
        source: MapError,
    },
}

/// When entries are old enough to go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    /// After a FIN or RST: time for the last ACKs and retransmissions.
    pub closing: Duration,
    /// A TCP flow with no packet for this long (kube-proxy's established timeout: a day).
    pub tcp_idle: Duration,
    /// A UDP flow with no packet for this long.
    pub udp_idle: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        Self {
            closing: Duration::from_secs(10),
            tcp_idle: Duration::from_secs(24 * 3600),
            udp_idle: Duration::from_secs(120),
        }
    }
}

/// `{svc_id, backend address, backend port}` (network order) of every programmed backend.
pub type LiveBackends = BTreeSet<(u32, u32, u16)>;

/// What one sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub backend_gone: usize,
    pub closed: usize,
    pub idle: usize,
    pub kept: usize,
}

/// The backend an entry leads to (original direction) or comes from (reply direction).
fn backend_of(key: &CtKey, value: &CtValue) -> (u32, u32, u16) {
    if key.dir == CT_DIR_ORIGINAL {
        (value.svc_id, value.addr_be, value.port_be)
    } else {
        (value.svc_id, key.saddr_be, key.sport_be)
    }
}

/// Why `value` should go now, if it should.
fn verdict(
    key: &CtKey,
    value: &CtValue,
    now_ns: u64,
    policy: &GcPolicy,
    live: Option<&LiveBackends>,
) -> Option<fn(&mut Swept)> {
    // The pod veths' flows (their own `dir`s) age by the same clocks, but `live` holds only the
    // uplink's backends: a ClusterIP backend is not judged by it. Their counted flows are
    // released once gone: `tc_limit::release_vanished` walks every record, whatever its `dir`.
    let uplink = key.dir == CT_DIR_ORIGINAL || key.dir == CT_DIR_REPLY;
    if uplink && live.is_some_and(|l| !l.contains(&backend_of(key, value))) {
        return Some(|s| s.backend_gone += 1);
    }
    let idle = Duration::from_nanos(now_ns.saturating_sub(value.last_seen_ns));
    if value.state == CT_STATE_CLOSING && idle >= policy.closing {
        return Some(|s| s.closed += 1);
    }
    let limit = if key.proto == PROTO_TCP {
        policy.tcp_idle
    } else {
        policy.udp_idle
    };
    (idle >= limit).then_some(|s: &mut Swept| s.idle += 1)
}

/// Removes what [`verdict`] says should go; `live`: also every entry whose backend is not in it.
pub fn sweep(
    ct: &mut HashMap<MapData, CtKey, CtValue>,
    now_ns: u64,
    policy: &GcPolicy,
    live: Option<&LiveBackends>,
) -> Result<Swept, TcCtError> {
    let mut swept = Swept::default();
    // Collected first: removing while the kernel iterates restarts the walk.
    let mut doomed = Vec::new();
    for entry in ct.iter() {
        let (key, value) = entry.map_err(|source| TcCtError::Map {
            op: "iterate",
            source,
        })?;
        match verdict(&key, &value, now_ns, policy, live) {
            Some(count) => {
                count(&mut swept);
                doomed.push(key);
            }
            None => swept.kept += 1,
        }
    }
    for key in doomed {
        match ct.remove(&key) {
            // Gone meanwhile (the LRU, or the programs): as good.
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(TcCtError::Map {
                    op: "remove",
                    source,
                })
            }
        }
    }
    Ok(swept)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` stamps entries with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The pinned conntrack map of `pin_dir`, for a sweeper apart from the reconciler.
pub fn open_pinned(
    pin_dir: &std::path::Path,
) -> Result<HashMap<MapData, CtKey, CtValue>, TcCtError> {
    let data =
        MapData::from_pin(pin_dir.join(MAP_TC_CT)).map_err(|source| TcCtError::Pin { source })?;
    HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(|source| TcCtError::Pin { source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_common::tc::CT_STATE_OPEN;
    use meshpath_common::tc_veth::{CT_DIR_VETH_ORIGINAL, CT_DIR_VETH_REPLY};
    use meshpath_common::PROTO_UDP;

    fn entry(dir: u8, proto: u8, state: u8, last_seen_ns: u64) -> (CtKey, CtValue) {
        let key = CtKey {
            saddr_be: 7,
            daddr_be: 8,
            sport_be: 9,
            dport_be: 10,
            proto,
            dir,
            _pad: 0,
        };
        let value = CtValue {
            addr_be: 1,
            port_be: 2,
            state,
            flags: 0,
            svc_id: 3,
            nat_addr_be: 0,
            nat_port_be: 0,
            _pad: 0,
            _pad1: 0,
            last_seen_ns,
        };
        (key, value)
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn closed_idle_and_orphaned_entries_go_and_live_ones_stay() {
        let p = GcPolicy::default();
        let now = 1_000_000 * S;
        let (k, v) = entry(CT_DIR_ORIGINAL, PROTO_TCP, CT_STATE_OPEN, now - 5 * S);
        assert!(verdict(&k, &v, now, &p, None).is_none());
        let (k, v) = entry(CT_DIR_ORIGINAL, PROTO_TCP, CT_STATE_CLOSING, now - 11 * S);
        assert!(verdict(&k, &v, now, &p, None).is_some());
        let (k, v) = entry(CT_DIR_ORIGINAL, PROTO_TCP, CT_STATE_CLOSING, now - 2 * S);
        assert!(verdict(&k, &v, now, &p, None).is_none());
        let (k, v) = entry(CT_DIR_REPLY, PROTO_UDP, CT_STATE_OPEN, now - 121 * S);
        assert!(verdict(&k, &v, now, &p, None).is_some());
        let (k, v) = entry(CT_DIR_REPLY, PROTO_TCP, CT_STATE_OPEN, now - 121 * S);
        assert!(verdict(&k, &v, now, &p, None).is_none());
        // The original direction names its backend in the value, the reply in the key.
        let live: LiveBackends = [(3, 1, 2)].into();
        let (k, v) = entry(CT_DIR_ORIGINAL, PROTO_TCP, CT_STATE_OPEN, now);
        assert!(verdict(&k, &v, now, &p, Some(&live)).is_none());
        let (k, v) = entry(CT_DIR_REPLY, PROTO_TCP, CT_STATE_OPEN, now);
        assert!(verdict(&k, &v, now, &p, Some(&live)).is_some());
        let live: LiveBackends = [(3, 7, 9)].into();
        assert!(verdict(&k, &v, now, &p, Some(&live)).is_none());
        // A pod veth's flow ages like the uplink's, but is not judged by the uplink's backends.
        let (k, v) = entry(CT_DIR_VETH_ORIGINAL, PROTO_UDP, CT_STATE_OPEN, now - 5 * S);
        assert!(verdict(&k, &v, now, &p, Some(&live)).is_none());
        let (k, v) = entry(
            CT_DIR_VETH_ORIGINAL,
            PROTO_TCP,
            CT_STATE_CLOSING,
            now - 11 * S,
        );
        assert!(verdict(&k, &v, now, &p, Some(&live)).is_some());
        let (k, v) = entry(CT_DIR_VETH_REPLY, PROTO_UDP, CT_STATE_OPEN, now - 121 * S);
        assert!(verdict(&k, &v, now, &p, None).is_some());
    }
}
