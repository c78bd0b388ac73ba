//! Sampling of live connections for Istio's TCP metrics: a TCP socket iterator (`iter/tcp`) the
//! agent runs on a timer, in each network namespace of the managed pods. For every socket it is
//! shown that sock_ops counts (in the socket's storage, `MP_TCP_SK`) and that is still established, it adds
//! `bytes_acked` / `bytes_received` moved since the last report to the connection's pair and
//! moves the connection's marks, so the close (in sock_ops) adds only the remainder.
//!
//! The kernel runs the program under the socket's lock (`bpf_iter_tcp_seq_show` takes it for full
//! sockets and skips unhashed ones), the same lock the sock_ops callbacks run under, so a sample
//! and the close never see the marks half-moved. The data path pays nothing: no per-packet
//! callback, and the iterator runs only when the agent reads it.
//!
//! The programs are built without CO-RE relocations, so the fields are read at offsets the agent
//! finds in the running kernel's BTF and sets as globals at load time (0: unknown).

use core::ffi::c_void;
use core::intrinsics::AtomicOrdering;

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_skc_to_tcp_sock};
use meshpath_common::Reason;

use crate::maps::{MP_COUNTERS, MP_TCP_SK};
use crate::tcp_metrics::{flow_stats, TCP_ESTABLISHED};

#[unsafe(no_mangle)]
static MP_TCP_OFF_STATE: u32 = 0;
#[unsafe(no_mangle)]
static MP_TCP_OFF_BYTES_ACKED: u32 = 0;
#[unsafe(no_mangle)]
static MP_TCP_OFF_BYTES_RECEIVED: u32 = 0;

/// `struct bpf_iter__tcp` (net/ipv4/tcp_ipv4.c): the context of a TCP socket iterator.
#[repr(C)]
struct IterTcp {
    meta: *mut c_void,
    sk_common: *mut c_void,
    uid: u32,
}

/// Adds `n` to a per-CPU counter atomically: the iterator runs in a preemptible task, so a
/// sock_ops callback on the same CPU may update the same slot in the middle of a plain `+=`.
#[inline(always)]
pub fn add(counter: *mut u64, n: u64) {
    if n != 0 {
        // SAFETY: the caller's pointer comes from a successful map lookup (8-byte aligned). SeqCst
        // for the reason given in lb.rs (LLVM 22 BPF lowering).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, n)
        };
    }
}

#[inline(always)]
fn count(reason: Reason) {
    if let Some(p) = MP_COUNTERS.get_ptr_mut(reason as u32) {
        add(p, 1);
    }
}

#[inline(always)]
pub fn sample(ctx: *mut c_void) {
    // SAFETY: the kernel hands the iterator its context; `sk_common` may be null (end of walk).
    let skc = unsafe { (*(ctx as *const IterTcp)).sk_common };
    if skc.is_null() {
        return;
    }
    // SAFETY: the helper checks the socket and returns null unless it is a full TCP socket
    // (listeners, request and TIME_WAIT sockets are skipped here).
    let tp = unsafe { bpf_skc_to_tcp_sock(skc) };
    if tp.is_null() {
        return;
    }
    // SAFETY: a full TCP socket (a `struct sock` first), checked non-null.
    let Some(s) = (unsafe { MP_TCP_SK.get(tp.cast()) }) else {
        return;
    };
    // SAFETY: the socket's storage, valid for this run.
    let conn = unsafe { &mut (*s).conn };
    // Not counted, or closed and reported.
    if conn.flow.svc_id == 0 {
        return;
    }
    let Some((state, acked, received)) = read_counters(tp.cast()) else {
        count(Reason::TcpMetricsSampleReadFailed);
        return;
    };
    // Only while established: no FIN has been consumed in either direction yet (the close
    // subtracts them from the state it closes from).
    if u32::from(state) != TCP_ESTABLISHED {
        return;
    }
    // Only this socket's callbacks and this program write `conn`, all under the socket's lock.
    let sent = acked.saturating_sub(conn.sent_reported);
    let recv = received.saturating_sub(conn.received_reported);
    if sent == 0 && recv == 0 {
        return;
    }
    let Some(stats) = flow_stats(&conn.flow) else {
        return;
    };
    // SAFETY: a per-CPU value from a successful lookup.
    unsafe {
        add(&mut (*stats).sent_bytes, sent);
        add(&mut (*stats).received_bytes, recv);
    }
    conn.sent_reported = acked;
    conn.received_reported = received;
    count(Reason::TcpMetricsSampled);
}

/// The socket's state, `bytes_acked` and `bytes_received`, at the offsets the agent set.
#[inline(always)]
fn read_counters(sk: *const u8) -> Option<(u8, u64, u64)> {
    // SAFETY: globals of the object; volatile so the compiler does not fold their initial 0.
    let (off_state, off_acked, off_received) = unsafe {
        (
            core::ptr::read_volatile(&MP_TCP_OFF_STATE),
            core::ptr::read_volatile(&MP_TCP_OFF_BYTES_ACKED),
            core::ptr::read_volatile(&MP_TCP_OFF_BYTES_RECEIVED),
        )
    };
    if off_acked == 0 || off_received == 0 {
        return None;
    }
    // SAFETY: kernel reads through the helper, which fails cleanly on a bad address.
    unsafe {
        let state = bpf_probe_read_kernel(sk.wrapping_add(off_state as usize)).ok()?;
        let acked =
            bpf_probe_read_kernel(sk.wrapping_add(off_acked as usize).cast::<u64>()).ok()?;
        let received =
            bpf_probe_read_kernel(sk.wrapping_add(off_received as usize).cast::<u64>()).ok()?;
        Some((state, acked, received))
    }
}
