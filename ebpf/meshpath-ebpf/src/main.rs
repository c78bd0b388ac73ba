//! meshpath's kernel programs. Entry points are thin: each calls a `try_` function whose `Ok` and
//! `Err` both carry the program's return value, and every failure path bumps a counter.
#![no_std]
#![no_main]
// Atomic fetch-add for the round-robin cursor (the BPF target's `core` lacks AtomicU64::fetch_add).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod addr;
mod connlimit;
mod counters;
mod lb;
mod live;
mod log;
mod maps;
mod proxy;
mod redirect;
mod revnat;
mod sk_storage;
mod sockops;
mod tc;
mod tcp_metrics;
mod tcp_sample;

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::{cgroup_sock, cgroup_sock_addr, sk_msg, sock_ops},
    programs::{SkMsgContext, SockAddrContext, SockContext, SockOpsContext},
    EbpfContext,
};
use meshpath_common::live::LIVE_TRACKED_SOCKS;
use meshpath_common::{Reason, CONFIG_UDP_STICKY_SEC, PROTO_TCP, PROTO_UDP, SVC_FLAG_DNS};

use addr::Family;
use counters::{bump, bump_service, ServiceCounter};
use maps::MP_CONFIG;

/// sock_addr return values: let the syscall proceed, or fail it (with the retval we set).
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// connect() of TCP and UDP sockets: ClusterIP:port → a backend's IP:targetPort.
#[cgroup_sock_addr(connect4)]
pub fn mp_connect4(ctx: SockAddrContext) -> i32 {
    redirect::mark_own_connect(&ctx);
    match try_translate(
        &ctx,
        Family::V4,
        ServiceCounter::Connects,
        Reason::ConnectTranslated,
    ) {
        Ok(v) | Err(v) => v,
    }
}

/// sendmsg() with a destination on unconnected UDP sockets: the same translation per datagram.
#[cgroup_sock_addr(sendmsg4)]
pub fn mp_sendmsg4(ctx: SockAddrContext) -> i32 {
    match try_translate(
        &ctx,
        Family::V4,
        ServiceCounter::Datagrams,
        Reason::SendmsgTranslated,
    ) {
        Ok(v) | Err(v) => v,
    }
}

/// recvmsg() on UDP sockets: a reply from a backend shows the ClusterIP as its source.
#[cgroup_sock_addr(recvmsg4)]
pub fn mp_recvmsg4(ctx: SockAddrContext) -> i32 {
    revnat::reverse(&ctx, Family::V4, Reason::RecvmsgReversed);
    // recvmsg and getpeername programs must return 1.
    ALLOW
}

/// getpeername(): a translated socket reports the ClusterIP:port it asked for, as with kube-proxy.
#[cgroup_sock_addr(getpeername4)]
pub fn mp_getpeername4(ctx: SockAddrContext) -> i32 {
    revnat::reverse(&ctx, Family::V4, Reason::GetpeernameReversed);
    ALLOW
}

/// The same four for dual-stack AF_INET6 sockets reaching IPv4 ClusterIPs (`::ffff:a.b.c.d`).
#[cgroup_sock_addr(connect6)]
pub fn mp_connect6(ctx: SockAddrContext) -> i32 {
    redirect::mark_own_connect(&ctx);
    match try_translate(
        &ctx,
        Family::V4MappedV6,
        ServiceCounter::Connects,
        Reason::ConnectTranslated,
    ) {
        Ok(v) | Err(v) => v,
    }
}

#[cgroup_sock_addr(sendmsg6)]
pub fn mp_sendmsg6(ctx: SockAddrContext) -> i32 {
    match try_translate(
        &ctx,
        Family::V4MappedV6,
        ServiceCounter::Datagrams,
        Reason::SendmsgTranslated,
    ) {
        Ok(v) | Err(v) => v,
    }
}

#[cgroup_sock_addr(recvmsg6)]
pub fn mp_recvmsg6(ctx: SockAddrContext) -> i32 {
    revnat::reverse(&ctx, Family::V4MappedV6, Reason::RecvmsgReversed);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn mp_getpeername6(ctx: SockAddrContext) -> i32 {
    revnat::reverse(&ctx, Family::V4MappedV6, Reason::GetpeernameReversed);
    ALLOW
}

/// TCP socket events of the managed cgroups: releases connection-limit slots and fills the
/// redirection SOCKHASH.
#[sock_ops]
pub fn mp_sockops(ctx: SockOpsContext) -> u32 {
    sockops::dispatch(&ctx)
}

/// Every socket of the managed cgroups released by its owner (close, exit, kill): frees a
/// connection-limit slot the socket still holds (see `connlimit`).
#[cgroup_sock(sock_release)]
pub fn mp_sock_release(ctx: SockContext) -> i32 {
    // Almost always nothing to free: no cookie, no lookup then.
    if live::empty(LIVE_TRACKED_SOCKS) {
        return ALLOW;
    }
    // SAFETY: the context pointer is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    connlimit::on_sock_release(cookie);
    // sock_release programs must return 1.
    ALLOW
}

/// TCP socket iterator the agent runs on a timer: samples the bytes of live counted connections
/// for Istio's TCP metrics (see `tcp_sample`). aya-ebpf has no macro for iterators; the section
/// name is what makes it one.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn mp_tcp_sample(ctx: *mut core::ffi::c_void) -> i32 {
    tcp_sample::sample(ctx);
    0
}

/// Every sendmsg() on a socket in the SOCKHASH: to the peer's receive queue when it is local.
#[sk_msg]
pub fn mp_skmsg(ctx: SkMsgContext) -> u32 {
    match redirect::try_skmsg(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

// Inlined into each entry point: returned through the stack from a BPF subprogram, the verifier
// loses the value's range and rejects the program ("R0 should have been in [0, 1]").
#[inline(always)]
fn try_translate(
    ctx: &SockAddrContext,
    family: Family,
    per_service: ServiceCounter,
    translated: Reason,
) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    let Some(vip_be) = addr::read_ip(sa, family) else {
        return Ok(ALLOW); // a real IPv6 destination: not a (IPv4) service
    };
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let (proto, port_be) = unsafe { ((*sa).protocol as u8, (*sa).user_port as u16) };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(ALLOW);
    }
    let Some((key, svc)) = lb::lookup_frontend(vip_be, port_be, proto) else {
        return Ok(ALLOW);
    };
    let to_proxy = match proxy::steering(&svc) {
        proxy::Steering::Kernel => None,
        proxy::Steering::Proxy(listener) => Some(listener),
        proxy::Steering::Fallback => {
            bump(Reason::ProxyFallback);
            None
        }
        proxy::Steering::Refuse => {
            bump(Reason::ProxyDownRefused);
            log::refused(ctx, svc.svc_id, Reason::ProxyDownRefused);
            return Err(refuse());
        }
    };
    // SAFETY: the context pointer is valid for the helper.
    let netns_cookie = || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // UDP needs the socket cookie (stickiness, reverse translation): fetched once. A TCP connect
    // needs it only for a connection limit, and fetches it then.
    // SAFETY: the context pointer is valid for the helper.
    let fetch_cookie = || unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let udp_cookie = (proto == PROTO_UDP).then(fetch_cookie);
    let socket_cookie = || udp_cookie.unwrap_or_else(fetch_cookie);
    let udp_sticky = if translated == Reason::SendmsgTranslated {
        match MP_CONFIG.get(CONFIG_UDP_STICKY_SEC).copied() {
            Some(timeout_sec) if timeout_sec != 0 => Some(lb::UdpSticky {
                socket_cookie: socket_cookie(),
                timeout_sec,
            }),
            _ => None,
        }
    } else {
        None
    };
    let selected = match to_proxy {
        // The proxy balances (and counts limits) itself: slot 0, no kernel connection limit.
        Some(listener) => Ok((0, listener)),
        None => lb::select_backend(&key, &svc, netns_cookie, udp_sticky),
    };
    let (slot, backend) = match selected {
        Ok(b) => b,
        Err(reason) => {
            bump(reason);
            log::refused(ctx, svc.svc_id, reason);
            if reason == Reason::NoBackend {
                bump_service(svc.svc_id, ServiceCounter::NoBackend);
            }
            return Err(refuse());
        }
    };

    if proto == PROTO_TCP && to_proxy.is_none() {
        let limit = connlimit::target(&key, &svc, slot);
        if let connlimit::Admission::Refused = connlimit::admit(limit, socket_cookie) {
            log::refused(ctx, svc.svc_id, Reason::ConnLimitRefused);
            return Err(refuse());
        }
    }
    revnat::remember(
        ctx,
        proto,
        socket_cookie,
        &backend,
        revnat::Frontend {
            vip_be,
            port_be,
            svc_id: svc.svc_id,
        },
    );
    addr::write_ip(sa, family, backend.ip_be);
    // SAFETY: connect/sendmsg programs may write user_port (4-byte write).
    unsafe { (*sa).user_port = backend.port_be as u32 };
    bump(translated);
    if svc.flags & SVC_FLAG_DNS != 0 {
        bump(Reason::DnsSteered);
    }
    bump_service(svc.svc_id, per_service);
    log::translated(ctx, svc.svc_id, backend.ip_be, backend.port_be);
    Ok(ALLOW)
}

/// Fails the syscall with ECONNREFUSED, at once, as a port with no listener would.
#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: bpf_set_retval is allowed in connect4/sendmsg4 (kernel ≥ 5.18).
    if unsafe { bpf_set_retval(-ECONNREFUSED) } != 0 {
        bump(Reason::SetRetvalFailed);
    }
    REJECT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
