//! The `MP_LIVE` bounds (see `meshpath_common::live`): skip a per-socket lookup when the map it
//! would search is empty.

use core::intrinsics::AtomicOrdering;

use crate::maps::MP_LIVE;

/// Whether the map counted in `slot` is certainly empty. A missing slot counts as "maybe not".
#[inline(always)]
pub fn empty(slot: u32) -> bool {
    MP_LIVE.get(slot).is_some_and(|n| *n == 0)
}

/// Before inserting an entry.
#[inline(always)]
pub fn add(slot: u32) {
    if let Some(n) = MP_LIVE.get_ptr_mut(slot) {
        // SAFETY: array values live as long as the map and are 8-byte aligned; shared by all
        // CPUs, hence atomic. SeqCst for the reason given in lb.rs (LLVM 22 BPF lowering).
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(n, 1) };
    }
}

/// After deleting an entry (or when an insert announced by [`add`] failed).
#[inline(always)]
pub fn sub(slot: u32) {
    if let Some(n) = MP_LIVE.get_ptr_mut(slot) {
        // SAFETY: as in `add`.
        unsafe { core::intrinsics::atomic_xsub::<u64, u64, { AtomicOrdering::SeqCst }>(n, 1) };
    }
}
