//! `connectionPool.tcp.maxConnections` for services on the pure kernel path: connect4 admits a TCP
//! connection only while fewer than the limit are active, and counts it by socket cookie; sock_ops
//! takes it off the count when that socket reaches TCP_CLOSE, whichever way it gets there (FIN,
//! RST, failed handshake, its process killed). The state callback is requested at TCP_CONNECT_CB,
//! before the SYN, so a handshake that fails is released too. A connect that fails before the
//! SYN (no route, no local port) never reaches sock_ops: `cgroup/sock_release`, which the kernel
//! runs for every socket its owner releases, frees whatever slot is still held then.
//!
//! What a connect counts against (see `meshpath_common::limits`, Envoy's semantics): a plain
//! frontend's connects count against its service-wide limit; a frontend whose slots are
//! VirtualService `tcp:` route destinations (`SVC_FLAG_ROUTE_LIMITS`) counts each connect against
//! the chosen slot's destination (a subset's group, or a service's own counter), never its own.

use core::intrinsics::AtomicOrdering;

use aya_ebpf::bindings::BPF_SOCK_OPS_STATE_CB_FLAG;
use aya_ebpf::programs::SockOpsContext;
use meshpath_common::{Reason, ServiceKey, ServiceValue, SockLimit, SVC_FLAG_ROUTE_LIMITS};

use crate::counters::{bump, bump_service, ServiceCounter};
use crate::live;
use crate::maps::{
    MP_CONN_ACTIVE, MP_CONN_MAX, MP_GRP_ACTIVE, MP_GRP_MAX, MP_GRP_REFUSED, MP_SLOT_GRP,
    MP_SOCK_LIMIT,
};
use meshpath_common::live::LIVE_TRACKED_SOCKS;

/// Outcome of asking for a slot.
pub enum Admission {
    /// No limit on this connection's counter.
    Unlimited,
    /// Counted; the socket is released when it closes.
    Admitted,
    Refused,
}

/// The counter a connect to frontend `key` balanced to `slot` counts against.
#[inline(always)]
pub fn target(key: &ServiceKey, svc: &ServiceValue, slot: u16) -> SockLimit {
    if svc.flags & SVC_FLAG_ROUTE_LIMITS == 0 {
        return SockLimit::service(svc.svc_id);
    }
    // SAFETY: the value is copied out at once.
    unsafe { MP_SLOT_GRP.get(&key.with_slot(slot)) }
        .copied()
        .unwrap_or(SockLimit::NONE)
}

/// Called by connect4/connect6 for TCP connects to a service, after a backend was chosen.
/// Refusals are counted where the limit is: per group, or in the limited service's stats.
// Each branch looks its two maps up and returns: an `Option` pair carried across both branches
// made LLVM spill an undefined register, which the verifier rejects ("R1 !read_ok").
#[inline(always)]
pub fn admit(limit: SockLimit, cookie: impl FnOnce() -> u64) -> Admission {
    if limit.group_id != 0 {
        let Some(max) = MP_GRP_MAX.get(limit.group_id) else {
            bump(Reason::ConnLimitIdInvalid);
            return Admission::Unlimited;
        };
        let max = *max;
        if max == 0 {
            return Admission::Unlimited;
        }
        let Some(active) = MP_GRP_ACTIVE.get_ptr_mut(limit.group_id) else {
            bump(Reason::ConnLimitIdInvalid);
            return Admission::Unlimited;
        };
        return count(max, active, limit, cookie);
    }
    if limit.svc_id != 0 {
        let Some(max) = MP_CONN_MAX.get(limit.svc_id) else {
            bump(Reason::ConnLimitIdInvalid);
            return Admission::Unlimited;
        };
        let max = *max;
        if max == 0 {
            // No limit: the shared counter is not even looked up.
            return Admission::Unlimited;
        }
        let Some(active) = MP_CONN_ACTIVE.get_ptr_mut(limit.svc_id) else {
            bump(Reason::ConnLimitIdInvalid);
            return Admission::Unlimited;
        };
        return count(max, active, limit, cookie);
    }
    Admission::Unlimited
}

/// Takes a slot of `active` (the counter `limit` names) if fewer than `max` are taken.
#[inline(always)]
fn count(max: u32, active: *mut u64, limit: SockLimit, cookie: impl FnOnce() -> u64) -> Admission {
    if max == 0 {
        return Admission::Unlimited;
    }
    // Only limited connects pay for the cookie.
    let cookie = cookie();
    // SAFETY: presence check only.
    if unsafe { MP_SOCK_LIMIT.get(cookie) }.is_some() {
        // This socket already holds a slot (a second connect() on it): count it once.
        return Admission::Admitted;
    }
    // SAFETY: array values live as long as the map and are 8-byte aligned; the count is shared
    // by all CPUs, hence atomic. SeqCst for the reason given in lb.rs (LLVM 22 BPF lowering).
    let before =
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(active, 1) };
    if before >= u64::from(max) {
        // Over the limit (possibly lost a race with another CPU): give the slot back.
        // SAFETY: as above.
        unsafe { core::intrinsics::atomic_xsub::<u64, u64, { AtomicOrdering::SeqCst }>(active, 1) };
        if limit.group_id != 0 {
            bump(Reason::ConnLimitSubsetRefused);
            if let Some(n) = MP_GRP_REFUSED.get_ptr_mut(limit.group_id) {
                // SAFETY: per-CPU slot, single writer (see counters::add).
                unsafe { *n += 1 };
            }
        } else {
            bump(Reason::ConnLimitRefused);
            bump_service(limit.svc_id, ServiceCounter::ConnLimitRefused);
        }
        return Admission::Refused;
    }
    live::add(LIVE_TRACKED_SOCKS);
    if MP_SOCK_LIMIT.insert(cookie, limit, 0).is_err() {
        live::sub(LIVE_TRACKED_SOCKS);
        // Untracked means never released: do not count it.
        // SAFETY: as above.
        unsafe { core::intrinsics::atomic_xsub::<u64, u64, { AtomicOrdering::SeqCst }>(active, 1) };
        bump(Reason::ConnTrackFull);
        return Admission::Unlimited;
    }
    Admission::Admitted
}

/// The sock_ops half, at TCP_CONNECT_CB: ask for state callbacks on a counted socket.
#[inline(always)]
pub fn on_connect(ctx: &SockOpsContext, cookie: impl FnOnce() -> u64) {
    if live::empty(LIVE_TRACKED_SOCKS) {
        return;
    }
    let cookie = cookie();
    // SAFETY: presence check only.
    if unsafe { MP_SOCK_LIMIT.get(cookie) }.is_none() {
        return;
    }
    if ctx
        .set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)
        .is_err()
    {
        // No TCP_CLOSE callback for this socket: sock_release frees its slot instead.
        bump(Reason::ConnLimitCbFlagsFailed);
    }
}

/// The sock_ops half, at TCP_CLOSE: release the socket's slot, if it holds one.
#[inline(always)]
pub fn on_close(cookie: impl FnOnce() -> u64) {
    if live::empty(LIVE_TRACKED_SOCKS) {
        return;
    }
    let cookie = cookie();
    // SAFETY: the value is copied out at once.
    let Some(limit) = (unsafe { MP_SOCK_LIMIT.get(cookie) }).copied() else {
        return;
    };
    release_slot(cookie, limit);
}

/// The sock_release half: whatever happened to the connection (connect failed before the SYN
/// so sock_ops never ran, closed in SYN_SENT, its process killed, its network namespace torn
/// down), the kernel releases every socket its owner created and runs this on it. A slot not
/// yet given back at TCP_CLOSE is given back here.
#[inline(always)]
pub fn on_sock_release(cookie: u64) {
    // SAFETY: the value is copied out at once.
    let Some(limit) = (unsafe { MP_SOCK_LIMIT.get(cookie) }).copied() else {
        return;
    };
    if release_slot(cookie, limit) {
        bump(Reason::ConnReleasedOnSockRelease);
    }
}

/// Gives `cookie`'s slot back, exactly once: of the two callers (TCP_CLOSE, sock_release), the
/// one whose delete of the tracking entry succeeds releases; the map delete is atomic.
#[inline(always)]
fn release_slot(cookie: u64, limit: SockLimit) -> bool {
    if MP_SOCK_LIMIT.remove(cookie).is_err() {
        return false;
    }
    live::sub(LIVE_TRACKED_SOCKS);
    let active = if limit.group_id != 0 {
        MP_GRP_ACTIVE.get_ptr_mut(limit.group_id)
    } else {
        MP_CONN_ACTIVE.get_ptr_mut(limit.svc_id)
    };
    match active {
        // SAFETY: as in `admit`.
        Some(active) => unsafe {
            core::intrinsics::atomic_xsub::<u64, u64, { AtomicOrdering::SeqCst }>(active, 1);
        },
        None => bump(Reason::ConnLimitIdInvalid),
    }
    bump(Reason::ConnReleased);
    true
}
