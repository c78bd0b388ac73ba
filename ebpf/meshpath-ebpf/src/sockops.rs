//! The sock_ops program's one dispatch. The kernel runs it for callbacks nobody here asked for
//! (TIMEOUT_INIT, RWND_INIT, NEEDS_ECN... on every socket) and, once any of the three users
//! (connection limits, TCP metrics, redirection) asked for state callbacks, for every state change
//! of the socket: about sixteen runs per short connection, of which a handful need work. Those
//! return after reading `op` (and the state), before any other context field or helper; the
//! socket cookie is fetched at most once per callback, and only when a connection limit needs it.

use aya_ebpf::bindings::{
    BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTT_CB,
    BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
};
use aya_ebpf::helpers::bpf_get_socket_cookie;
use aya_ebpf::programs::SockOpsContext;
use aya_ebpf::EbpfContext;
use meshpath_common::Reason;

use crate::counters::bump;
use crate::tcp_metrics::{TCP_CLOSE, TCP_FIN_WAIT2};
use crate::{connlimit, redirect, tcp_metrics};

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: sock_ops hands a valid context to the helper.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

#[inline(always)]
pub fn dispatch(ctx: &SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => connlimit::on_connect(ctx, || cookie(ctx)),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            // Both users may want state callbacks: asked for once, with one helper call.
            let metrics = tcp_metrics::on_active_established(ctx);
            let redirected = redirect::on_established(ctx, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB);
            if metrics || redirected {
                let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
                if ctx.set_cb_flags(flags as i32).is_err() {
                    if metrics {
                        bump(Reason::TcpMetricsCbFlagsFailed);
                    }
                    if redirected {
                        bump(Reason::RedirectCbFlagsFailed);
                    }
                }
            }
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            if redirect::on_established(ctx, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
                let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
                if ctx.set_cb_flags(flags as i32).is_err() {
                    bump(Reason::RedirectCbFlagsFailed);
                }
            }
        }
        BPF_SOCK_OPS_STATE_CB => match ctx.arg(1) {
            TCP_CLOSE => {
                connlimit::on_close(|| cookie(ctx));
                tcp_metrics::closed(ctx, ctx.arg(0));
                redirect::on_close(ctx);
            }
            TCP_FIN_WAIT2 => tcp_metrics::fin_wait2(ctx),
            _ => {}
        },
        BPF_SOCK_OPS_RTT_CB => tcp_metrics::drop_rtt_cb(ctx),
        _ => {}
    }
    0
}
