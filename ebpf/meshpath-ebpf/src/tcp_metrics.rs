//! Istio's TCP metrics for kernel-path services (see `meshpath_common::tcp_metrics`). sock_ops acts
//! when the client end is established (counts the open, remembers the connection in the socket's
//! own storage next to its reverse translation, asks for state callbacks) and when it reaches
//! TCP_CLOSE (adds the bytes not yet reported, counts the close, marks the connection reported). Both are per connection, never per
//! packet: no callback that runs on every ACK (such as the RTT one) is asked for.
//!
//! Long-lived connections are sampled by a TCP socket iterator the agent runs on a timer
//! (`tcp_sample`), which adds the bytes moved since the last report and moves the connection's
//! `*_reported` marks, so the close adds only the remainder.
//! Only client ends whose connect() was translated are counted: their reverse translation (in
//! the socket's storage) names the frontend, so the pair is (client IP, frontend, backend address).

use aya_ebpf::bindings::{BPF_NOEXIST, BPF_SOCK_OPS_RTT_CB_FLAG};
use aya_ebpf::programs::SockOpsContext;
use meshpath_common::{Reason, TcpConn, TcpFlowKey, TcpFlowStats, TcpSock, CONFIG_TCP_METRICS};

use crate::counters::bump;
use crate::maps::{MP_CONFIG, MP_TCP_FLOWS, MP_TCP_SK};

/// TCP states (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_FIN_WAIT2: u32 = 5;
pub const TCP_CLOSE: u32 = 7;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

/// At ACTIVE_ESTABLISHED: counts the open of a translated connection. Whether it wants state
/// callbacks (the caller asks for them once for every user).
#[inline(always)]
pub fn on_active_established(ctx: &SockOpsContext) -> bool {
    MP_CONFIG.get(CONFIG_TCP_METRICS).copied().unwrap_or(0) != 0 && opened(ctx)
}

/// Only a connection counted by an earlier agent version asks for this per-ACK callback: drop
/// it, once, so connections that outlive an upgrade stop paying for it.
#[inline(always)]
pub fn drop_rtt_cb(ctx: &SockOpsContext) {
    let _ = ctx.set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_RTT_CB_FLAG) as i32);
}

/// This socket's storage, if connect4 gave it one (it translated the connect).
#[inline(always)]
fn tcp_sock(ctx: &SockOpsContext) -> Option<*mut TcpSock> {
    // SAFETY: sock_ops hands a valid context; `sk` may be null and is checked.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: the context's own socket, non-null.
    unsafe { MP_TCP_SK.get(sk) }
}

#[inline(always)]
fn opened(ctx: &SockOpsContext) -> bool {
    let backend_ip_be = ctx.remote_ip4();
    // The remote port is the network-order u16 in the upper half (see redirect.rs).
    let backend_port_be = (ctx.remote_port() >> 16) as u16;
    // Translated by connect4, to this very peer.
    let Some(s) = tcp_sock(ctx).filter(|&s| {
        // SAFETY: a socket storage value, valid for this run.
        let r = unsafe { (*s).revnat };
        r.svc_id != 0 && r.backend_ip_be == backend_ip_be && r.backend_port_be == backend_port_be
    }) else {
        bump(Reason::TcpMetricsNoRevNat);
        return false;
    };
    let flow = TcpFlowKey {
        client_ip_be: ctx.local_ip4(),
        backend_ip_be,
        // SAFETY: as above.
        svc_id: unsafe { (*s).revnat.svc_id },
        backend_port_be,
        _pad0: 0,
    };
    let Some(stats) = flow_stats(&flow) else {
        return false;
    };
    // SAFETY: sock_ops hands a valid context; established sockets are full TCP sockets.
    let (acked, received) = unsafe { ((*ctx.ops).bytes_acked, (*ctx.ops).bytes_received) };
    // SAFETY: the socket's storage, written only under the socket's lock (this callback, the
    // close, the sampling iterator; connect() before any of them). `flow` last: a non-zero
    // service id is what makes the connection counted.
    unsafe {
        (*s).conn = TcpConn {
            flow,
            // The SYN (acknowledged by now) is not a byte the application sent.
            sent_reported: acked,
            received_reported: received,
            fin_wait2_received: u64::MAX,
        };
        (*stats).opened += 1;
    }
    bump(Reason::TcpMetricsOpened);
    true
}

/// Remembers what was received when our FIN was acknowledged (see `TcpConn::fin_wait2_received`).
#[inline(always)]
pub fn fin_wait2(ctx: &SockOpsContext) {
    if let Some(s) = tcp_sock(ctx) {
        // SAFETY: as in `opened`. The context field read is plain.
        unsafe {
            if (*s).conn.flow.svc_id != 0 {
                (*s).conn.fin_wait2_received = (*ctx.ops).bytes_received;
            }
        }
    }
}

/// `from` is the state the socket closes from: it tells which FINs the counters include. A
/// reset in LAST_ACK or CLOSING (our FIN never acknowledged) counts one byte short.
#[inline(always)]
pub fn closed(ctx: &SockOpsContext, from: u32) {
    let Some(s) = tcp_sock(ctx) else {
        return;
    };
    // SAFETY: as in `opened`.
    let conn = unsafe { (*s).conn };
    if conn.flow.svc_id == 0 {
        return;
    }
    // Reported once: the iterator and a second close see it closed.
    // SAFETY: as in `opened`.
    unsafe { (*s).conn.flow.svc_id = 0 };
    // SAFETY: sock_ops hands a valid context; at TCP_CLOSE the socket is a full TCP socket, whose
    // byte counters the kernel exposes through it.
    let (acked, received) = unsafe { ((*ctx.ops).bytes_acked, (*ctx.ops).bytes_received) };
    let our_fin_acked = matches!(from, TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING);
    // From FIN_WAIT2 the close is either the peer's FIN (received counter moved since) or a
    // timeout / an orphaned socket's ACK path (it did not).
    let peer_fin = matches!(from, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING)
        || (from == TCP_FIN_WAIT2
            && conn.fin_wait2_received != u64::MAX
            && received > conn.fin_wait2_received);
    let acked = acked.saturating_sub(u64::from(our_fin_acked));
    let received = received.saturating_sub(u64::from(peer_fin));
    let Some(stats) = flow_stats(&conn.flow) else {
        return;
    };
    // SAFETY: as in `opened`. The bytes are added atomically, as the iterator adds them: it runs
    // in a preemptible task and may share this CPU's slot (see `tcp_sample::add`).
    unsafe {
        (*stats).closed += 1;
        crate::tcp_sample::add(
            &mut (*stats).sent_bytes,
            acked.saturating_sub(conn.sent_reported),
        );
        crate::tcp_sample::add(
            &mut (*stats).received_bytes,
            received.saturating_sub(conn.received_reported),
        );
    }
    bump(Reason::TcpMetricsClosed);
}

/// This CPU's stats of a pair, created (zero) when the pair is new.
#[inline(always)]
pub fn flow_stats(flow: &TcpFlowKey) -> Option<*mut TcpFlowStats> {
    if let Some(p) = MP_TCP_FLOWS.get_ptr_mut(flow) {
        return Some(p);
    }
    // NOEXIST: another CPU may have created it meanwhile; either way it exists afterwards.
    let _ = MP_TCP_FLOWS.insert(flow, &TcpFlowStats::default(), BPF_NOEXIST as u64);
    let p = MP_TCP_FLOWS.get_ptr_mut(flow);
    if p.is_none() {
        bump(Reason::TcpMetricsFlowTableFull);
    }
    p
}
