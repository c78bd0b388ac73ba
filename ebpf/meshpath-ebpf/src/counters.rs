//! Per-CPU counters: every outcome and failure path bumps one, and the agent exports them.

use meshpath_common::Reason;

use crate::maps::{MP_COUNTERS, MP_SVC_STATS};

#[inline(always)]
pub fn bump(reason: Reason) {
    add(reason, 1);
}

#[inline(always)]
pub fn add(reason: Reason, n: u64) {
    if let Some(p) = MP_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot is only written by this CPU, and programs do not preempt each
        // other on one CPU, so a plain increment is race-free.
        unsafe { *p += n };
    }
}

/// Which field of a service's [`meshpath_common::ServiceStats`] to bump. An enum rather than a
/// field accessor closure: BPF has no indirect calls, so everything must resolve statically.
#[derive(Clone, Copy)]
pub enum ServiceCounter {
    Connects,
    Datagrams,
    NoBackend,
    AffinityHits,
    ConnLimitRefused,
}

#[inline(always)]
pub fn bump_service(svc_id: u32, counter: ServiceCounter) {
    let Some(p) = MP_SVC_STATS.get_ptr_mut(svc_id) else {
        bump(Reason::ServiceStatsMissing);
        return;
    };
    // SAFETY: as in `bump`: per-CPU, single writer; the pointer comes from a successful lookup.
    unsafe {
        let stats = &mut *p;
        match counter {
            ServiceCounter::Connects => stats.connects += 1,
            ServiceCounter::Datagrams => stats.datagrams += 1,
            ServiceCounter::NoBackend => stats.no_backend += 1,
            ServiceCounter::AffinityHits => stats.affinity_hits += 1,
            ServiceCounter::ConnLimitRefused => stats.conn_limit_refused += 1,
        }
    }
}
