//! `connectionPool.tcp.maxConnections` for flows the tc programs create (the uplink's, and the
//! pod veths' ClusterIP flows, filed under their own `dir` values): a new TCP flow takes a
//! slot of the same counter connect4 counts the Service's sockets against (`MP_CONN_ACTIVE`,
//! limit in `MP_CONN_MAX`), so one limit covers every path.
//!
//! The conntrack is an LRU that evicts silently, so the record of which flows hold a slot is a
//! plain hash of its own (`MP_TC_COUNTED`, original-direction key → counter). A slot is given
//! back exactly once, by whoever deletes that record: the first FIN or RST of the flow (either
//! direction), or the agent's sweep, which runs `mp_tc_ct_release` for every record whose
//! conntrack entry is gone (evicted, or removed by the sweep itself).

use core::intrinsics::AtomicOrdering;

use meshpath_common::{
    tc::{CtKey, TcReason, CT_FLAG_COUNTED},
    SockLimit,
};

use super::maps::{bump, MP_TC_COUNTED, MP_TC_CT};
use crate::maps::{MP_CONN_ACTIVE, MP_CONN_MAX};

/// Outcome of asking for a slot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The Service has no limit: nothing counted.
    Unlimited,
    /// A slot was taken: [`track`] it once the flow exists, or [`undo`] it.
    Admitted,
    Refused,
}

/// A new flow's place in its Service's connection limit: the slot it took, if any.
#[derive(Clone, Copy)]
pub struct Slot {
    pub svc_id: u32,
    pub counted: bool,
}

impl Slot {
    /// The flow was not created: its slot goes back.
    #[inline(always)]
    pub fn undo(self) {
        if self.counted {
            undo(self.svc_id);
        }
    }

    /// The flow's entries are written: record it, so its close or the sweep releases it.
    #[inline(always)]
    pub fn track(self, original: &CtKey) {
        if self.counted {
            track(original, self.svc_id);
        }
    }

    #[inline(always)]
    pub fn flags(self) -> u8 {
        if self.counted {
            CT_FLAG_COUNTED
        } else {
            0
        }
    }
}

/// Takes a slot of `svc_id`'s counter if fewer than its limit are taken.
#[inline(always)]
pub fn admit(svc_id: u32) -> Admission {
    let max = match MP_CONN_MAX.get(svc_id) {
        Some(max) => *max,
        None => return Admission::Unlimited,
    };
    if max == 0 {
        return Admission::Unlimited;
    }
    let Some(active) = MP_CONN_ACTIVE.get_ptr_mut(svc_id) else {
        return Admission::Unlimited;
    };
    // SAFETY: array values live as long as the map and are 8-byte aligned; shared with every
    // CPU and with connect4, hence atomic (SeqCst: see lb.rs, LLVM's BPF lowering).
    let before =
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(active, 1) };
    if before >= u64::from(max) {
        // SAFETY: as above.
        unsafe { core::intrinsics::atomic_xsub::<u64, u64, { AtomicOrdering::SeqCst }>(active, 1) };
        // Counted by the caller, which refuses the packet.
        return Admission::Refused;
    }
    Admission::Admitted
}

/// Gives back a slot [`admit`] took for a flow that was not created after all.
#[inline(always)]
pub fn undo(svc_id: u32) {
    if let Some(active) = MP_CONN_ACTIVE.get_ptr_mut(svc_id) {
        // SAFETY: as in `admit`.
        unsafe { core::intrinsics::atomic_xsub::<u64, u64, { AtomicOrdering::SeqCst }>(active, 1) };
    }
}

/// Records that the flow `original` holds a slot of `svc_id`, once its conntrack entries are
/// written (so the agent's sweep never sees a record whose entry is still to come). `false`:
/// the record could not be written and the slot was given back (the flow goes on uncounted).
#[inline(always)]
pub fn track(original: &CtKey, svc_id: u32) -> bool {
    if MP_TC_COUNTED
        .insert(original, &SockLimit::service(svc_id), 0)
        .is_err()
    {
        undo(svc_id);
        bump(TcReason::ConnLimitUntracked);
        return false;
    }
    true
}

/// Whether the flow `original` still holds a slot: a flow whose conntrack entries were evicted
/// is tracked again from a later segment without taking a second one (the veth path, which
/// picks up flows mid-stream).
#[inline(always)]
pub fn holds(original: &CtKey) -> bool {
    // SAFETY: presence check only.
    unsafe { MP_TC_COUNTED.get(original) }.is_some()
}

/// Gives back the slot of the flow `original`, if it still holds one. `true`: this call did.
#[inline(always)]
pub fn release(original: &CtKey) -> bool {
    // SAFETY: the value is copied out at once.
    let Some(limit) = (unsafe { MP_TC_COUNTED.get(original) }).copied() else {
        return false;
    };
    // Of two racing releasers (a FIN on each CPU, or a FIN and the sweep), only the one whose
    // delete succeeds gives the slot back: the map delete is atomic.
    if MP_TC_COUNTED.remove(original).is_err() {
        return false;
    }
    undo(limit.svc_id);
    true
}

/// The sweep's half: `original` (a counted flow's key) is released only if its conntrack entry
/// is really gone, checked again here since the agent looked.
#[inline(always)]
pub fn release_vanished(original: &CtKey) -> bool {
    // SAFETY: presence check only.
    if unsafe { MP_TC_CT.get(original) }.is_some() {
        return false;
    }
    let released = release(original);
    if released {
        bump(TcReason::ConnReleasedSwept);
    }
    released
}
