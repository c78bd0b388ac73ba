//! Steered (L7) frontends: a connection goes to the node proxy's listener only while a proxy
//! socket listens there, decided per connect from `MP_PROXY_SOCKS`. The agent puts each
//! listening socket in that sockhash; the kernel takes a socket out of a sockhash when it is
//! closed (process exit and `kill -9` included), so a missing entry means "nobody accepts there".
//!
//! Why a sockhash lookup rather than `bpf_sk_lookup_tcp` on the proxy's address: the proxy may
//! listen in another network namespace than the client's (`--proxy-netns`), which the lookup
//! helper only reaches through a netns id the client's namespace would have to assign; the
//! sockhash is namespace-free and names exactly the sockets the agent opened. Looking up a
//! sockhash from a cgroup sock_addr program returns a referenced socket (kernel ≥ 5.10 allows
//! `bpf_map_lookup_elem` on SOCKMAP/SOCKHASH from any program type) that must be released with
//! `bpf_sk_release`, which sock_addr programs have had since 5.2.

use aya_ebpf::helpers::{bpf_map_lookup_elem, bpf_sk_release};
use meshpath_common::{Backend, ServiceValue, SVC_FLAG_FAIL_CLOSED, SVC_FLAG_STEERED};

use crate::maps::MP_PROXY_SOCKS;

/// What connect4 does with a frontend.
pub enum Steering {
    /// Not steered: balance over the slots.
    Kernel,
    /// Steered and the proxy listens: to this listener.
    Proxy(Backend),
    /// Steered, the proxy does not listen, fail-open: balance over the slots.
    Fallback,
    /// Steered, the proxy does not listen, fail-closed: refuse.
    Refuse,
}

#[inline(always)]
pub fn steering(svc: &ServiceValue) -> Steering {
    if svc.flags & SVC_FLAG_STEERED == 0 {
        return Steering::Kernel;
    }
    // The header carries the listener's address (no `MP_BACKENDS` lookup per connect).
    let listener = svc.backend;
    match listener {
        l if l.ip_be != 0 && listening(&l) => Steering::Proxy(l),
        _ if svc.flags & SVC_FLAG_FAIL_CLOSED != 0 => Steering::Refuse,
        _ => Steering::Fallback,
    }
}

/// Whether a proxy socket is in the sockhash under `listener`.
#[inline(always)]
fn listening(listener: &Backend) -> bool {
    let key = *listener;
    // SAFETY: `SockHash` is `repr(transparent)` over its map definition, so its address is the
    // map pointer the helper takes; the key is a live stack value of the map's key type.
    let sk = unsafe {
        bpf_map_lookup_elem(
            core::ptr::addr_of!(MP_PROXY_SOCKS) as *mut _,
            core::ptr::addr_of!(key).cast(),
        )
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a non-null sockhash lookup result is a referenced socket; released exactly once.
    unsafe { bpf_sk_release(sk) };
    true
}
