//! Sending a rewritten packet straight out of the interface the FIB names, past the stack's
//! forwarding: a source-NATed packet carries one of the node's own addresses as its source,
//! which the stack's input path would drop as a martian, and a reply already translated back
//! to the client needs no second routing decision.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use meshpath_common::tc::TcReason;

const AF_INET: u8 = 2;
const FIB_SUCCESS: i64 = 0;
/// The route is known but the neighbour is not resolved: `bpf_redirect_neigh` resolves it.
const FIB_NO_NEIGH: i64 = 7;
/// `bpf_redirect_neigh`'s answer when the redirect is queued.
const TC_ACT_REDIRECT: i64 = 7;

/// Redirects the packet (already addressed `saddr_be` → `daddr_be`) out of the FIB's egress
/// interface towards `daddr_be`, the neighbour filled in by the kernel. Returns the verdict.
/// Not inlined: the lookup's parameters then take stack only while it runs.
#[inline(never)]
pub fn to_fib_nexthop(ctx: &TcContext, saddr_be: u32, daddr_be: u32) -> Result<i32, TcReason> {
    // SAFETY: a plain-data struct; all-zero is a valid (empty) lookup.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    // SAFETY: the context's skb pointer is valid for this program run.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_3.ipv4_src = saddr_be;
    params.__bindgen_anon_4.ipv4_dst = daddr_be;
    // SAFETY: `params` lives on this stack frame, its size is passed along.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != FIB_SUCCESS && rc != FIB_NO_NEIGH {
        return Err(TcReason::FibFailed);
    }
    // On success the lookup wrote the next hop (the gateway, or the destination itself) over
    // `ipv4_dst`: handed to the redirect, the kernel does not route the packet a second time.
    // Without a resolved neighbour, no next hop: the kernel routes it again and resolves it.
    let mut nh = bpf_redir_neigh {
        nh_family: u32::from(AF_INET),
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
            // SAFETY: reading the union member the lookup wrote.
            ipv4_nh: unsafe { params.__bindgen_anon_4.ipv4_dst },
        },
    };
    let (nh_ptr, nh_len) = if rc == FIB_SUCCESS {
        (&raw mut nh, core::mem::size_of::<bpf_redir_neigh>() as i32)
    } else {
        (core::ptr::null_mut(), 0)
    };
    // SAFETY: `nh` lives on this stack frame, its size is passed along (or no params at all).
    let verdict = unsafe { bpf_redirect_neigh(params.ifindex, nh_ptr, nh_len, 0) };
    if verdict != TC_ACT_REDIRECT {
        return Err(TcReason::FibFailed);
    }
    Ok(verdict as i32)
}
