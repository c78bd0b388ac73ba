//! tc programs on the node's uplink: per-packet service load balancing for clients the socket
//! hooks never see (NodePort, `externalIPs`, LoadBalancer ingress IPs reached from outside the
//! node). Ingress translates a client's packets to a backend and tracks the flow; egress writes
//! the frontend's address back into the backend's replies as they leave through the uplink.
//!
//! Entry points stay thin: each calls a function whose `Ok` and `Err` both carry the verdict.

mod affinity;
mod flow;
mod fib_out;
mod forward;
mod limit;
mod maps;
mod nat;
mod refuse;
mod snat;
mod veth;

use aya_ebpf::{macros::classifier, programs::TcContext};

/// Let the packet continue through the stack (translated or not).
pub const TC_ACT_OK: i32 = 0;
/// Drop it: a frontend packet the program cannot deliver (counted by reason).
pub const TC_ACT_SHOT: i32 = 2;

#[classifier]
pub fn mp_tc_ingress(ctx: TcContext) -> i32 {
    match flow::ingress(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[classifier]
pub fn mp_tc_egress(ctx: TcContext) -> i32 {
    match flow::egress(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// Run by the agent (`BPF_PROG_TEST_RUN`), never attached: releases the connection slot of the
/// counted flow whose original key follows the Ethernet-sized pad, if its conntrack entry is
/// gone (see `limit`). Returns 1 when it released one, else 0.
#[classifier]
pub fn mp_tc_ct_release(ctx: TcContext) -> i32 {
    match ctx.load::<meshpath_common::tc::CtKey>(meshpath_common::tc::ETH_PAD) {
        Ok(key) => limit::release_vanished(&key) as i32,
        Err(_) => 0,
    }
}
