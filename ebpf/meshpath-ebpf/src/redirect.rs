//! Same-node socket redirection: sock_ops puts both ends of an established connection into a
//! SOCKHASH; sk_msg hands each message straight to the peer's receive queue (BPF_F_INGRESS),
//! skipping the TCP/IP stack twice.
//!
//! Ordering rule: a stream is either redirected from its first message or never. If a message
//! finds no peer (peer elsewhere, or its socket not established yet), it takes the TCP path and the
//! socket is marked so later messages do too; otherwise a later redirected message could overtake
//! TCP bytes still in flight and the receiver, which reads its redirect queue first, would see them
//! out of order.
//!
//! Scope: a socket in the SOCKHASH gets the kernel's `tcp_bpf_recvmsg`, whose blocking `recv()`
//! can return EAGAIN on a wakeup without data; blocking clients (libpq, Python's `socket`) take
//! that for an error. So by default (`REDIRECT_OPT_IN`) only sockets known to be safe enter the
//! SOCKHASH: those whose local address is an opted-in pod's (`MP_REDIR_PODS`), the node proxy's
//! accepted ones (local address in its listeners' range, `MP_REDIR_PROXY`) and its connecting
//! ones (marked by connect4, the only program that runs in the connecting task, from the
//! agent's cgroup id in `MP_REDIR_CGRP`). Every other socket keeps the plain TCP path.

use aya_ebpf::bindings::{
    sk_action::SK_PASS, BPF_F_INGRESS, BPF_NOEXIST, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
};
use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_socket_cookie};
use aya_ebpf::programs::{SkMsgContext, SockAddrContext, SockOpsContext};
use aya_ebpf::EbpfContext;
use meshpath_common::{
    Reason, SockKey, CONFIG_REDIRECT, PROTO_TCP, REDIRECT_ON, REDIRECT_OPT_IN, REDIRECT_PAUSED,
    REDIRECT_PROXY_IP, REDIRECT_PROXY_PORT_FIRST, REDIRECT_PROXY_PORT_LAST, REDIRECT_STATE_MASK,
};

use crate::counters::{add, bump};
use crate::live;
use crate::maps::{
    MP_CONFIG, MP_REDIR_CGRP, MP_REDIR_COOK, MP_REDIR_PODS, MP_REDIR_PROXY, MP_SOCKS,
    MP_SOCK_FALLBK,
};
use meshpath_common::live::LIVE_FALLBACK_MARKS;

const AF_INET: u32 = 2;
const EEXIST: i32 = 17;
const AF_INET6: u32 = 10;

/// `::ffff:0:0/96` as the third 32-bit word of an IPv6 address read natively (bytes 00 00 ff ff).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// IPv4 connections of dual-stack sockets (a Go or Java server listening on `[::]` accepts
/// IPv4 clients on AF_INET6 sockets with v4-mapped addresses) are IPv4 connections too: the
/// kernel fills the IPv4 address fields of such sockets, so they get the same keys.
#[inline(always)]
fn is_ipv4(ctx: &SockOpsContext) -> bool {
    match ctx.family() {
        AF_INET => true,
        AF_INET6 => {
            let (l, r) = (ctx.local_ip6(), ctx.remote_ip6());
            l[0] == 0
                && l[1] == 0
                && l[2] == V4_MAPPED_WORD
                && r[0] == 0
                && r[1] == 0
                && r[2] == V4_MAPPED_WORD
        }
        _ => false,
    }
}

/// sock_ops and sk_msg encode the remote port as the network-order u16 in the upper half of a
/// u32 (on little-endian), the local port in host order.
#[inline(always)]
fn key(local_ip_be: u32, remote_ip_be: u32, local_port: u32, remote_port_raw: u32) -> SockKey {
    SockKey {
        local_ip_be,
        remote_ip_be,
        local_port: local_port as u16,
        remote_port: u16::from_be((remote_port_raw >> 16) as u16),
    }
}

/// This socket's key, if it is an IPv4 connection (see [`is_ipv4`]).
#[inline(always)]
fn sock_key(ctx: &SockOpsContext) -> Option<SockKey> {
    if !is_ipv4(ctx) {
        return None;
    }
    Some(key(
        ctx.local_ip4(),
        ctx.remote_ip4(),
        ctx.local_port(),
        ctx.remote_port(),
    ))
}

/// At ACTIVE/PASSIVE_ESTABLISHED (`op`): puts the socket into the SOCKHASH when redirection
/// applies to it. Whether it was put there: it then wants state callbacks, so the close clears
/// its per-tuple mark (the caller asks for them).
#[inline(always)]
pub fn on_established(ctx: &SockOpsContext, op: u32) -> bool {
    let Some(mut k) = sock_key(ctx) else {
        return false;
    };
    // sock_ops also runs for the connection limit; redirection may be off or paused.
    let mode = MP_CONFIG.get(CONFIG_REDIRECT).copied().unwrap_or(0);
    match mode & REDIRECT_STATE_MASK {
        REDIRECT_ON => {}
        REDIRECT_PAUSED => {
            bump(Reason::SockRedirectDisabled);
            return false;
        }
        _ => return false,
    }
    if mode & REDIRECT_OPT_IN != 0 && !opted_in(ctx, op, &k) {
        bump(Reason::SockNotOptedIn);
        return false;
    }
    // SAFETY: sock_ops hands a valid context; the helper only reads the socket from it.
    match MP_SOCKS.update(&mut k, unsafe { &mut *ctx.ops }, 0) {
        Ok(()) => {
            bump(Reason::SockInserted);
            true
        }
        Err(_) => {
            bump(Reason::SockInsertFailed);
            crate::log::sock_insert_failed(ctx, k.local_port, k.remote_port);
            false
        }
    }
}

/// At TCP_CLOSE. Deliberately NOT deleted from the SOCKHASH here: TCP_CLOSE is reached while the
/// application may still have unread redirected bytes (e.g. a half-closed client whose peer's
/// FIN moves it to TIME_WAIT); deleting the entry drops the socket's psock and with it those
/// bytes (seen in the byte-exactness tests: replies cut short). The kernel removes the socket
/// from the map itself when its owner closes it, which the tests check ("sockhash drains").
/// Only our own per-tuple mark is cleared.
#[inline(always)]
pub fn on_close(ctx: &SockOpsContext) {
    let Some(k) = sock_key(ctx) else {
        return;
    };
    // Almost no socket has a mark: none to look for while no socket has one, and looked up
    // before the delete, since a lookup takes no bucket lock where a delete does, found or not.
    // SAFETY: presence only.
    if !live::empty(LIVE_FALLBACK_MARKS)
        && unsafe { MP_SOCK_FALLBK.get(&k) }.is_some()
        && MP_SOCK_FALLBK.remove(&k).is_ok()
    {
        live::sub(LIVE_FALLBACK_MARKS);
    }
    if MP_CONFIG.get(CONFIG_REDIRECT).copied().unwrap_or(0) != 0 {
        bump(Reason::SockClosed);
    }
}

/// Whether an established socket may be redirected in the opt-in scope (see the module doc).
#[inline(always)]
fn opted_in(ctx: &SockOpsContext, op: u32, k: &SockKey) -> bool {
    // SAFETY: values are not dereferenced; only presence matters.
    if unsafe { MP_REDIR_PODS.get(&k.local_ip_be) }.is_some() {
        return true;
    }
    if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        let slot = |i| MP_REDIR_PROXY.get(i).copied().unwrap_or(0);
        let ip = slot(REDIRECT_PROXY_IP);
        let port = u32::from(k.local_port);
        return ip != 0
            && ip == k.local_ip_be
            && port >= slot(REDIRECT_PROXY_PORT_FIRST)
            && port <= slot(REDIRECT_PROXY_PORT_LAST);
    }
    // SAFETY: sock_ops hands a valid context to the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: as above, presence only.
    let own = unsafe { MP_REDIR_COOK.get(&cookie) }.is_some();
    if own {
        let _ = MP_REDIR_COOK.remove(&cookie);
    }
    own
}

/// connect()/connect6 of a TCP socket: remembers the sockets the node proxy connects (its
/// cgroup is in `MP_REDIR_CGRP`), for [`opted_in`] when they establish. Only in the opt-in
/// scope; everything else costs one array read.
#[inline(always)]
pub fn mark_own_connect(ctx: &SockAddrContext) {
    let mode = MP_CONFIG.get(CONFIG_REDIRECT).copied().unwrap_or(0);
    if mode & REDIRECT_OPT_IN == 0 || mode & REDIRECT_STATE_MASK != REDIRECT_ON {
        return;
    }
    // SAFETY: the kernel hands every sock_addr program a valid context.
    if unsafe { (*ctx.sock_addr).protocol } as u8 != PROTO_TCP {
        return;
    }
    // SAFETY: no arguments; connect runs in the connecting task.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: presence only.
    if unsafe { MP_REDIR_CGRP.get(&cgroup) }.is_none() {
        return;
    }
    // SAFETY: the context pointer is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = MP_REDIR_COOK.insert(&cookie, &1, 0);
}

pub fn try_skmsg(ctx: &SkMsgContext) -> Result<u32, u32> {
    // SAFETY: sk_msg hands a valid context.
    let md = unsafe { &*ctx.msg };
    let own = key(md.local_ip4, md.remote_ip4, md.local_port, md.remote_port);
    // No mark to look for while no socket has one (see `meshpath_common::live`).
    // SAFETY: values are not dereferenced; only presence matters.
    if !live::empty(LIVE_FALLBACK_MARKS) && unsafe { MP_SOCK_FALLBK.get(&own) }.is_some() {
        bump(Reason::MsgFallbackSticky);
        return Ok(SK_PASS);
    }
    let size = ctx.size();
    if MP_SOCKS.redirect_msg(ctx, own.peer(), BPF_F_INGRESS as u64) == SK_PASS as i64 {
        bump(Reason::MsgRedirected);
        add(Reason::MsgRedirectedBytes, u64::from(size));
    } else {
        // No peer: this message goes the TCP way, and so must the rest of the stream. Counted
        // before it exists, so no later message of this socket can skip the lookup.
        live::add(LIVE_FALLBACK_MARKS);
        match MP_SOCK_FALLBK.insert(&own, &1, BPF_NOEXIST as u64) {
            Ok(()) => {}
            // Marked already (a tuple reused before its mark was cleared): counted then.
            Err(e) if e == -EEXIST => live::sub(LIVE_FALLBACK_MARKS),
            Err(_) => {
                live::sub(LIVE_FALLBACK_MARKS);
                bump(Reason::SockFallbackMarkFailed);
            }
        }
        bump(Reason::MsgFallbackNoPeer);
    }
    Ok(SK_PASS)
}
