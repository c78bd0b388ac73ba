//! The tc path's own maps (see `meshpath_common::tc` for why they are apart from the socket
//! path's), pinned by name like every other map.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use meshpath_common::{
    tc::{
        CtKey, CtValue, TcAffinityKey, TcAffinityValue, TcReason, TcSlot, MAX_TC_AFFINITY,
        MAX_TC_COUNTED, MAX_TC_CT, MAX_TC_NODE_IPS, MAX_TC_SERVICE_ENTRIES, TC_REASON_COUNT,
    },
    ServiceKey, SockLimit,
};

use crate::maps::NO_PREALLOC;

/// {external IP or any-node-IP, port, proto, slot} → header or backend.
#[map]
pub static MP_TC_SVC: HashMap<ServiceKey, TcSlot> =
    HashMap::pinned(MAX_TC_SERVICE_ENTRIES, NO_PREALLOC);

/// The node's own addresses → 1: where NodePorts answer.
#[map]
pub static MP_TC_NODE_IPS: HashMap<u32, u32> = HashMap::pinned(MAX_TC_NODE_IPS, NO_PREALLOC);

/// Both directions of every translated flow. LRU: a flow whose FIN or RST was missed (or a UDP
/// flow, which has none) ages out instead of filling the table.
#[map]
pub static MP_TC_CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_TC_CT, 0);

/// Counted flows (see `limit`): apart from the LRU, so an evicted flow's slot is still found.
/// Not preallocated: idle without limits.
#[map]
pub static MP_TC_COUNTED: HashMap<CtKey, SockLimit> = HashMap::pinned(MAX_TC_COUNTED, NO_PREALLOC);

/// `sessionAffinity: ClientIP`: {frontend, client} → its backend (see `affinity`).
#[map]
pub static MP_TC_AFFINITY: LruHashMap<TcAffinityKey, TcAffinityValue> =
    LruHashMap::pinned(MAX_TC_AFFINITY, 0);

/// TcReason → count, per CPU.
#[map]
pub static MP_TC_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(TC_REASON_COUNT, 0);

#[inline(always)]
pub fn bump(reason: TcReason) {
    if let Some(p) = MP_TC_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot is only written by this CPU, and programs do not preempt each
        // other on one CPU, so a plain increment is race-free.
        unsafe { *p += 1 };
    }
}
