//! Forwarding a pod's packet past the host stack: into a local pod with `bpf_redirect_peer`
//! (straight to the peer's ingress in the pod's namespace: no bridge, no routing, no netfilter,
//! no second pass through the host-side veth), or towards a configured pod network with
//! `bpf_fib_lookup` + `bpf_redirect_neigh` (the kernel's route and neighbour tables, but not its
//! forwarding path or netfilter). Anything else is left to the host stack.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, bpf_redir_neigh},
    helpers::{bpf_fib_lookup, bpf_redirect_neigh, bpf_redirect_peer},
    maps::lpm_trie::Key,
    programs::TcContext,
    EbpfContext,
};
use meshpath_common::tc_veth::VethReason;

use super::nat::Packet;
use super::veth::{bump, MP_TC_FWD_NETS, MP_TC_PODS};
use super::TC_ACT_OK;

const TC_ACT_REDIRECT: i32 = 7;
const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const ETH_HLEN: usize = 14;

#[inline(always)]
pub fn forward(ctx: &TcContext, daddr_be: u32, p: &Packet) -> i32 {
    // SAFETY: the value is copied out at once.
    if let Some(ifindex) = unsafe { MP_TC_PODS.get(&daddr_be) }.copied() {
        // SAFETY: no pointer arguments.
        let r = unsafe { bpf_redirect_peer(ifindex, 0) };
        return redirected(r, VethReason::RedirectPeer);
    }
    if MP_TC_FWD_NETS.get(Key::new(32, daddr_be)).is_none() {
        return TC_ACT_OK;
    }
    // SAFETY: plain old data; zero is a valid value of every field.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = p.proto;
    fib.sport = p.sport_be;
    fib.dport = p.dport_be;
    // SAFETY: `ctx.skb.skb` is the program's live context.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    fib.__bindgen_anon_1.tot_len = (len as usize).saturating_sub(ETH_HLEN) as u16;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_3.ipv4_src = p.saddr_be;
    fib.__bindgen_anon_4.ipv4_dst = daddr_be;
    // SAFETY: `fib` is a live stack value of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS || fib.ifindex == ifindex {
        bump(VethReason::FibPassed);
        return TC_ACT_OK;
    }
    // The lookup wrote the next hop (the gateway, or the destination itself) over `ipv4_dst`.
    let mut nh = bpf_redir_neigh {
        nh_family: AF_INET as u32,
        // SAFETY: reading the union member the lookup wrote.
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: unsafe { fib.__bindgen_anon_4.ipv4_dst },
        },
    };
    // SAFETY: `nh` is a live stack value of the size passed.
    let r = unsafe {
        bpf_redirect_neigh(
            fib.ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    redirected(r, VethReason::RedirectNeigh)
}

#[inline(always)]
fn redirected(r: i64, reason: VethReason) -> i32 {
    if r as i32 == TC_ACT_REDIRECT {
        bump(reason);
        TC_ACT_REDIRECT
    } else {
        bump(VethReason::RedirectFailed);
        TC_ACT_OK
    }
}
