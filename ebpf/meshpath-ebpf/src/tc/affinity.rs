//! `sessionAffinity: ClientIP` on the tc path, as the socket path keeps it: a client's new flow
//! goes to the backend its previous one went to while that was less than the timeout ago and
//! the backend is still in the same slot; each new flow renews the entry.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use meshpath_common::{
    tc::{TcAffinityKey, TcAffinityValue, TcReason, TcSlot},
    ServiceKey,
};

use super::maps::{bump, MP_TC_AFFINITY, MP_TC_SVC};

/// The client's affinity backend and its slot, if it still holds.
#[inline(always)]
pub fn lookup(frontend: &ServiceKey, header: &TcSlot, client_be: u32) -> Option<(u16, TcSlot)> {
    let key = TcAffinityKey {
        frontend: *frontend,
        client_be,
    };
    // SAFETY: the value is copied out at once.
    let a = unsafe { MP_TC_AFFINITY.get(&key) }.copied()?;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(a.last_ns) >= header.affinity_sec as u64 * 1_000_000_000 {
        return None;
    }
    // SAFETY: the value is copied out at once.
    let slot = unsafe { MP_TC_SVC.get(&frontend.with_slot(a.slot)) }.copied()?;
    if slot.backend_ip_be != a.backend_ip_be || slot.backend_port_be != a.backend_port_be {
        return None;
    }
    bump(TcReason::AffinityHit);
    Some((a.slot, slot))
}

/// Records (or renews) the client's backend.
#[inline(always)]
pub fn remember(frontend: &ServiceKey, client_be: u32, slot: u16, backend: &TcSlot) {
    let key = TcAffinityKey {
        frontend: *frontend,
        client_be,
    };
    let value = TcAffinityValue {
        backend_ip_be: backend.backend_ip_be,
        backend_port_be: backend.backend_port_be,
        slot,
        // SAFETY: no preconditions.
        last_ns: unsafe { bpf_ktime_get_ns() },
    };
    if MP_TC_AFFINITY.insert(&key, &value, 0).is_err() {
        bump(TcReason::AffinityUpdateFailed);
    }
}
