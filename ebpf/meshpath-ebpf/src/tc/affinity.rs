//! `sessionAffinity: ClientIP` on the tc paths (the uplink's frontends and the pod veths'
//! ClusterIPs), as the socket path keeps it: a client's new flow goes to the backend its
//! previous one went to while that was less than the timeout ago and the backend is still in
//! the same slot; each new flow renews the entry. Both paths share `MP_TC_AFFINITY` (their
//! frontend keys never collide: external IPs and NodePorts against ClusterIPs); each reads its
//! own slots, so the slot check is the caller's, and each counts hits and failures in its own
//! counters.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use meshpath_common::{
    tc::{TcAffinityKey, TcAffinityValue, TcReason, TcSlot},
    ServiceKey,
};

use super::maps::{bump, MP_TC_AFFINITY, MP_TC_SVC};

/// The client's remembered backend for `frontend`, if it is younger than `timeout_sec`.
#[inline(always)]
pub fn recall(frontend: &ServiceKey, timeout_sec: u32, client_be: u32) -> Option<TcAffinityValue> {
    let key = TcAffinityKey {
        frontend: *frontend,
        client_be,
    };
    // SAFETY: the value is copied out at once.
    let a = unsafe { MP_TC_AFFINITY.get(&key) }.copied()?;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(a.last_ns) >= timeout_sec as u64 * 1_000_000_000 {
        return None;
    }
    Some(a)
}

/// The uplink's half: the client's affinity backend and its slot, if it still holds.
#[inline(always)]
pub fn lookup(frontend: &ServiceKey, header: &TcSlot, client_be: u32) -> Option<(u16, TcSlot)> {
    let a = recall(frontend, header.affinity_sec, client_be)?;
    // SAFETY: the value is copied out at once.
    let slot = unsafe { MP_TC_SVC.get(&frontend.with_slot(a.slot)) }.copied()?;
    if slot.backend_ip_be != a.backend_ip_be || slot.backend_port_be != a.backend_port_be {
        return None;
    }
    bump(TcReason::AffinityHit);
    Some((a.slot, slot))
}

/// Records (or renews) the client's backend (uplink), counting a failure.
#[inline(always)]
pub fn remember(frontend: &ServiceKey, client_be: u32, slot: u16, backend: &TcSlot) {
    if !remember_backend(
        frontend,
        client_be,
        slot,
        backend.backend_ip_be,
        backend.backend_port_be,
    ) {
        bump(TcReason::AffinityUpdateFailed);
    }
}

/// Records (or renews) the client's backend, as slot and address. `false`: the map refused it
/// (the caller counts that in its own counters).
#[inline(always)]
pub fn remember_backend(
    frontend: &ServiceKey,
    client_be: u32,
    slot: u16,
    backend_ip_be: u32,
    backend_port_be: u16,
) -> bool {
    let key = TcAffinityKey {
        frontend: *frontend,
        client_be,
    };
    let value = TcAffinityValue {
        backend_ip_be,
        backend_port_be,
        slot,
        // SAFETY: no preconditions.
        last_ns: unsafe { bpf_ktime_get_ns() },
    };
    MP_TC_AFFINITY.insert(&key, &value, 0).is_ok()
}
