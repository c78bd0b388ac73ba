//! Backend selection for a frontend: a remembered choice first (session affinity per client
//! network namespace, or per-socket stickiness of unconnected UDP), then round robin or random.
//!
//! A remembered choice is used only while it is fresh and its backend still serves the service
//! (checked here, against `MP_SVC_BACKENDS` or the slot itself): the agent never scans the LRUs.

use core::intrinsics::AtomicOrdering;

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use meshpath_common::{
    AffinityKey, AffinityValue, Backend, Reason, ServiceKey, ServiceValue, SvcBackendKey,
    UdpStickyKey, NO_ENDPOINT_BACKEND_ID, SVC_FLAG_AFFINITY, SVC_FLAG_ROUND_ROBIN,
    SVC_FLAG_ROUTE_LIMITS,
};

use crate::counters::{bump, bump_service, ServiceCounter};
use crate::maps::{MP_AFFINITY, MP_BACKENDS, MP_RR, MP_SERVICES, MP_SVC_BACKENDS, MP_UDP_STICKY};

const NS_PER_SEC: u64 = 1_000_000_000;

/// The frontend header (slot 0) for an address, if it is a service.
#[inline(always)]
pub fn lookup_frontend(vip_be: u32, port_be: u16, proto: u8) -> Option<(ServiceKey, ServiceValue)> {
    let key = ServiceKey::new(vip_be, port_be, proto, 0);
    // SAFETY: the value is copied out at once; the agent replaces slot 0 with a single update.
    let svc = unsafe { MP_SERVICES.get(&key) }?;
    Some((key, *svc))
}

/// Per-socket stickiness of an unconnected UDP socket: its cookie and the idle timeout.
#[derive(Clone, Copy)]
pub struct UdpSticky {
    pub socket_cookie: u64,
    pub timeout_sec: u32,
}

/// Picks the backend for a new connection or datagram, with the slot it came from (what the
/// connection limit of a route destination is keyed by). `netns_cookie` is only called when the
/// service has session affinity (the helper costs a call on every connect otherwise). Session
/// affinity, when the service has it, wins over UDP stickiness (it is the wider of the two).
#[inline(always)]
pub fn select_backend(
    key: &ServiceKey,
    svc: &ServiceValue,
    netns_cookie: impl FnOnce() -> u64,
    udp_sticky: Option<UdpSticky>,
) -> Result<(u16, Backend), Reason> {
    let count = svc.count as u32;
    if count == 0 {
        return Err(Reason::NoBackend);
    }
    if svc.flags & SVC_FLAG_AFFINITY != 0 {
        return by_affinity(key, svc, count, netns_cookie());
    }
    if let Some(sticky) = udp_sticky {
        return by_socket(key, svc, count, sticky);
    }
    let slot = pick_slot(svc, count)?;
    Ok((slot, backend_in_slot(key, slot)?.1))
}

#[inline(always)]
fn by_affinity(
    key: &ServiceKey,
    svc: &ServiceValue,
    count: u32,
    netns_cookie: u64,
) -> Result<(u16, Backend), Reason> {
    let aff_key = AffinityKey {
        netns_cookie,
        svc_id: svc.svc_id,
        _pad0: 0,
    };
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = svc.affinity_timeout_sec as u64 * NS_PER_SEC;
    match recall(MP_AFFINITY.get_ptr_mut(&aff_key), key, svc, now, timeout_ns) {
        Recall::Fresh(slot, backend) => {
            bump(Reason::AffinityHit);
            bump_service(svc.svc_id, ServiceCounter::AffinityHits);
            return Ok((slot, backend));
        }
        Recall::Expired => bump(Reason::AffinityExpired),
        Recall::Stale => bump(Reason::AffinityStale),
        Recall::Absent => {}
    }
    let slot = pick_slot(svc, count)?;
    let (backend_id, backend) = backend_in_slot(key, slot)?;
    if MP_AFFINITY
        .insert(&aff_key, &remembered(backend_id, slot, now), 0)
        .is_err()
    {
        bump(Reason::AffinityUpdateFailed);
    }
    Ok((slot, backend))
}

#[inline(always)]
fn by_socket(
    key: &ServiceKey,
    svc: &ServiceValue,
    count: u32,
    sticky: UdpSticky,
) -> Result<(u16, Backend), Reason> {
    let sticky_key = UdpStickyKey {
        socket_cookie: sticky.socket_cookie,
        svc_id: svc.svc_id,
        _pad0: 0,
    };
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = sticky.timeout_sec as u64 * NS_PER_SEC;
    match recall(
        MP_UDP_STICKY.get_ptr_mut(&sticky_key),
        key,
        svc,
        now,
        timeout_ns,
    ) {
        Recall::Fresh(slot, backend) => {
            bump(Reason::UdpStickyHit);
            return Ok((slot, backend));
        }
        Recall::Expired => bump(Reason::UdpStickyExpired),
        Recall::Stale => bump(Reason::UdpStickyStale),
        Recall::Absent => {}
    }
    let slot = pick_slot(svc, count)?;
    let (backend_id, backend) = backend_in_slot(key, slot)?;
    if MP_UDP_STICKY
        .insert(&sticky_key, &remembered(backend_id, slot, now), 0)
        .is_err()
    {
        bump(Reason::UdpStickyUpdateFailed);
    }
    Ok((slot, backend))
}

/// What a remembered choice says.
enum Recall {
    /// Fresh and its backend still serves the service: use it (its timestamp was refreshed).
    Fresh(u16, Backend),
    Expired,
    /// Its backend left the service (or is gone).
    Stale,
    Absent,
}

#[inline(always)]
fn recall(
    entry: Option<*mut AffinityValue>,
    key: &ServiceKey,
    svc: &ServiceValue,
    now: u64,
    timeout_ns: u64,
) -> Recall {
    let Some(entry) = entry else {
        return Recall::Absent;
    };
    // SAFETY: a map value pointer from a successful lookup, valid for this program run.
    let prev = unsafe { *entry };
    if now.wrapping_sub(prev.last_used_ns) > timeout_ns {
        return Recall::Expired;
    }
    if !serves(key, svc, prev.backend_id, prev.slot) {
        return Recall::Stale;
    }
    // SAFETY: the value is copied out at once.
    let Some(backend) = (unsafe { MP_BACKENDS.get(prev.backend_id) }).copied() else {
        return Recall::Stale;
    };
    // Refreshed in place: a plain 8-byte store, no map update per packet. A concurrent writer
    // on another CPU can only store another "now".
    // SAFETY: as above.
    unsafe { (*entry).last_used_ns = now };
    Recall::Fresh(prev.slot, backend)
}

/// Whether `backend_id` still serves the service. On a frontend with route-destination limits
/// the remembered slot must still name it too: the slot says which destination's limit the
/// connection counts against.
#[inline(always)]
fn serves(key: &ServiceKey, svc: &ServiceValue, backend_id: u32, slot: u16) -> bool {
    if svc.flags & SVC_FLAG_ROUTE_LIMITS != 0 {
        if slot == 0 || slot > svc.count {
            return false;
        }
        // SAFETY: the value is copied out at once.
        return unsafe { MP_SERVICES.get(&key.with_slot(slot)) }
            .is_some_and(|v| v.backend_id == backend_id);
    }
    let pair = SvcBackendKey {
        svc_id: svc.svc_id,
        backend_id,
    };
    // SAFETY: presence check only.
    unsafe { MP_SVC_BACKENDS.get(&pair) }.is_some()
}

#[inline(always)]
fn remembered(backend_id: u32, slot: u16, now: u64) -> AffinityValue {
    AffinityValue {
        backend_id,
        slot,
        _pad0: 0,
        last_used_ns: now,
    }
}

/// A slot in `1..=count`.
#[inline(always)]
fn pick_slot(svc: &ServiceValue, count: u32) -> Result<u16, Reason> {
    let n = if svc.flags & SVC_FLAG_ROUND_ROBIN != 0 {
        let Some(state) = MP_RR.get_ptr_mut(svc.svc_id) else {
            return Err(Reason::RoundRobinStateMissing);
        };
        // SAFETY: array map values live as long as the map and are 8-byte aligned. The cursor is
        // shared by all CPUs, so it is advanced atomically (BPF_ATOMIC fetch-add, cpu v3). The
        // intrinsic, because the BPF target's `core` has no atomic read-modify-write types.
        // SeqCst, not Relaxed: LLVM 22's BPF backend lowers a *relaxed* fetch-add to a plain
        // `lock +=` and then uses the addend as the "old value" (seen in llvm-objdump), which
        // would pin every connection to slot 2. SeqCst emits a real `atomic_fetch_add`.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(
                &raw mut (*state).next,
                1,
            ) as u32
        }
    } else {
        // SAFETY: no preconditions.
        unsafe { bpf_get_prandom_u32() }
    };
    Ok((n % count) as u16 + 1)
}

/// The backend of `slot`: one lookup, the slot carries the address (see `ServiceValue::backend`).
#[inline(always)]
fn backend_in_slot(key: &ServiceKey, slot: u16) -> Result<(u32, Backend), Reason> {
    // SAFETY: the value is copied out at once.
    let slot_val = unsafe { MP_SERVICES.get(&key.with_slot(slot)) }.ok_or(Reason::SlotMissing)?;
    if slot_val.backend_id == NO_ENDPOINT_BACKEND_ID {
        return Err(Reason::NoBackend);
    }
    if slot_val.backend.ip_be == 0 {
        return Err(Reason::BackendMissing);
    }
    Ok((slot_val.backend_id, slot_val.backend))
}
