//! Backend selection for a frontend: session affinity first, then round robin or random.

use core::intrinsics::AtomicOrdering;

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use meshpath_common::{
    AffinityKey, AffinityValue, Backend, Reason, ServiceKey, ServiceValue, SVC_FLAG_AFFINITY,
    SVC_FLAG_ROUND_ROBIN,
};

use crate::counters::{bump, bump_service, ServiceCounter};
use crate::maps::{MP_AFFINITY, MP_BACKENDS, MP_RR, MP_SERVICES};

const NS_PER_SEC: u64 = 1_000_000_000;

/// The frontend header (slot 0) for an address, if it is a service.
#[inline(always)]
pub fn lookup_frontend(vip_be: u32, port_be: u16, proto: u8) -> Option<(ServiceKey, ServiceValue)> {
    let key = ServiceKey::new(vip_be, port_be, proto, 0);
    // SAFETY: the value is copied out at once; the agent replaces slot 0 with a single update.
    let svc = unsafe { MP_SERVICES.get(&key) }?;
    Some((key, *svc))
}

/// Picks the backend for a new connection or datagram, with the slot it came from (what the
/// connection limit of a route destination is keyed by). `netns_cookie` is only called when the
/// service has session affinity (the helper costs a call on every connect otherwise).
#[inline(always)]
pub fn select_backend(
    key: &ServiceKey,
    svc: &ServiceValue,
    netns_cookie: impl FnOnce() -> u64,
) -> Result<(u16, Backend), Reason> {
    let count = svc.count as u32;
    if count == 0 {
        return Err(Reason::NoBackend);
    }
    if svc.flags & SVC_FLAG_AFFINITY == 0 {
        let slot = pick_slot(svc, count)?;
        return Ok((slot, backend_in_slot(key, slot)?.1));
    }

    let aff_key = AffinityKey {
        netns_cookie: netns_cookie(),
        svc_id: svc.svc_id,
        _pad0: 0,
    };
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the value is copied out at once.
    if let Some(prev) = unsafe { MP_AFFINITY.get(&aff_key) }.copied() {
        let timeout_ns = svc.affinity_timeout_sec as u64 * NS_PER_SEC;
        if now.wrapping_sub(prev.last_used_ns) <= timeout_ns {
            // SAFETY: the value is copied out at once.
            if let Some(backend) = unsafe { MP_BACKENDS.get(prev.backend_id) }.copied() {
                remember(&aff_key, prev.backend_id, prev.slot, now);
                bump(Reason::AffinityHit);
                bump_service(svc.svc_id, ServiceCounter::AffinityHits);
                return Ok((prev.slot, backend));
            }
        } else {
            bump(Reason::AffinityExpired);
        }
    }
    let slot = pick_slot(svc, count)?;
    let (backend_id, backend) = backend_in_slot(key, slot)?;
    remember(&aff_key, backend_id, slot, now);
    Ok((slot, backend))
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

#[inline(always)]
fn backend_in_slot(key: &ServiceKey, slot: u16) -> Result<(u32, Backend), Reason> {
    // SAFETY: values are copied out at once.
    let slot_val = unsafe { MP_SERVICES.get(&key.with_slot(slot)) }.ok_or(Reason::SlotMissing)?;
    let backend_id = slot_val.backend_id;
    // SAFETY: as above.
    let backend = unsafe { MP_BACKENDS.get(backend_id) }.ok_or(Reason::BackendMissing)?;
    Ok((backend_id, *backend))
}

#[inline(always)]
fn remember(key: &AffinityKey, backend_id: u32, slot: u16, now: u64) {
    let value = AffinityValue {
        backend_id,
        slot,
        _pad0: 0,
        last_used_ns: now,
    };
    if MP_AFFINITY.insert(key, &value, 0).is_err() {
        bump(Reason::AffinityUpdateFailed);
    }
}
