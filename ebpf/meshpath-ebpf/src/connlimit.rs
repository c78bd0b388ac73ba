//! `connectionPool.tcp.maxConnections` for services on the pure kernel path: connect4 admits a TCP
//! connection only while fewer than the limit are active, and counts it by socket cookie; sock_ops
//! takes it off the count when that socket reaches TCP_CLOSE, whichever way it gets there (FIN,
//! RST, failed handshake, its process killed). The state callback is requested at TCP_CONNECT_CB,
//! before the SYN, so a handshake that fails is released too.

use core::intrinsics::AtomicOrdering;

use aya_ebpf::bindings::{
    BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
};
use aya_ebpf::helpers::bpf_get_socket_cookie;
use aya_ebpf::programs::SockOpsContext;
use aya_ebpf::EbpfContext;
use meshpath_common::Reason;

use crate::counters::{bump, bump_service, ServiceCounter};
use crate::maps::{MP_CONN_ACTIVE, MP_CONN_MAX, MP_SOCK_SVC};

const BPF_TCP_CLOSE: u32 = 7;

/// Outcome of asking for a slot.
pub enum Admission {
    /// No limit on this service.
    Unlimited,
    /// Counted; `cookie` must be released when the socket closes.
    Admitted,
    Refused,
}

/// Called by connect4 for TCP connects to a service, after a backend was chosen.
#[inline(always)]
pub fn admit(svc_id: u32, cookie: u64) -> Admission {
    let max = MP_CONN_MAX.get(svc_id).copied().unwrap_or(0);
    if max == 0 {
        return Admission::Unlimited;
    }
    // SAFETY: presence check only.
    if unsafe { MP_SOCK_SVC.get(cookie) }.is_some() {
        // This socket already holds a slot (a second connect() on it): count it once.
        return Admission::Admitted;
    }
    let Some(active) = MP_CONN_ACTIVE.get_ptr_mut(svc_id) else {
        return Admission::Unlimited;
    };
    // SAFETY: array values live as long as the map and are 8-byte aligned; the count is shared
    // by all CPUs, hence atomic. SeqCst for the reason given in lb.rs (LLVM 22 BPF lowering).
    let before =
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(active, 1) };
    if before >= u64::from(max) {
        // Over the limit (possibly lost a race with another CPU): give the slot back.
        // SAFETY: as above.
        unsafe { core::intrinsics::atomic_xsub::<u64, u64, { AtomicOrdering::SeqCst }>(active, 1) };
        bump(Reason::ConnLimitRefused);
        bump_service(svc_id, ServiceCounter::ConnLimitRefused);
        return Admission::Refused;
    }
    if MP_SOCK_SVC.insert(cookie, svc_id, 0).is_err() {
        // Untracked means never released: do not count it.
        // SAFETY: as above.
        unsafe { core::intrinsics::atomic_xsub::<u64, u64, { AtomicOrdering::SeqCst }>(active, 1) };
        bump(Reason::ConnTrackFull);
        return Admission::Unlimited;
    }
    Admission::Admitted
}

/// The sock_ops half: ask for state callbacks on counted sockets, release them at TCP_CLOSE.
#[inline(always)]
pub fn on_sockops(ctx: &SockOpsContext) {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB
        && !(op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == BPF_TCP_CLOSE)
    {
        return;
    }
    // SAFETY: the context pointer is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let Some(svc_id) = (unsafe { MP_SOCK_SVC.get(cookie) }).copied() else {
        return;
    };
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        return;
    }
    if MP_SOCK_SVC.remove(cookie).is_ok() {
        if let Some(active) = MP_CONN_ACTIVE.get_ptr_mut(svc_id) {
            // SAFETY: as in `admit`.
            unsafe {
                core::intrinsics::atomic_xsub::<u64, u64, { AtomicOrdering::SeqCst }>(active, 1)
            };
        }
        bump(Reason::ConnReleased);
    }
}
