//! Reverse translation: what connect()/sendmsg() rewrote, so getpeername() and recvmsg() show the
//! ClusterIP:port the application asked for, as kube-proxy's DNAT does.
//!
//! TCP sockets keep it in their own storage (`MP_TCP_SK`): one value per socket, written at
//! connect with no hashing, no LRU node to take and no bucket lock, and freed with the socket.
//! UDP sockets keep `MP_REVNAT` entries keyed by {cookie, backend}: an unconnected socket may send
//! to several services and a reply's source says which one it came from.

use aya_ebpf::bindings::bpf_sock_addr;
use aya_ebpf::helpers::bpf_get_socket_cookie;
use aya_ebpf::programs::SockAddrContext;
use aya_ebpf::EbpfContext;
use meshpath_common::{
    Backend, Reason, RevNatKey, RevNatSk, RevNatValue, ServiceKey, CONFIG_TCP_GETPEERNAME_OFF,
    CONFIG_TCP_METRICS, PROTO_TCP,
};

use crate::addr::{self, Family};
use crate::counters::bump;
use crate::maps::{MP_CONFIG, MP_REVNAT, MP_SERVICES, MP_TCP_SK};
use crate::tcp_metrics::TCP_CLOSE;

/// The frontend a translated socket asked for.
#[derive(Clone, Copy)]
pub struct Frontend {
    pub vip_be: u32,
    pub port_be: u16,
    pub svc_id: u32,
}

#[inline(always)]
fn sk(sa: *mut bpf_sock_addr) -> *mut aya_ebpf::bindings::bpf_sock {
    // SAFETY: sock_addr programs always have a full socket in `sk`.
    unsafe { (*sa).__bindgen_anon_1.sk }
}

/// At connect()/sendmsg(): remembers that this socket's `backend` stands for `frontend`.
/// `socket_cookie` is only called for UDP. A failure leaves the connection working; only
/// getpeername()/recvmsg() will show the backend (counted).
#[inline(always)]
pub fn remember(
    ctx: &SockAddrContext,
    proto: u8,
    socket_cookie: impl FnOnce() -> u64,
    backend: &Backend,
    frontend: Frontend,
) {
    if proto == PROTO_TCP {
        // The socket's storage serves getpeername() and the TCP metrics; with both off it is not
        // created (two array reads, against an allocation).
        if !tcp_getpeername() && MP_CONFIG.get(CONFIG_TCP_METRICS).copied().unwrap_or(0) == 0 {
            return;
        }
        let sk = sk(ctx.sock_addr);
        // SAFETY: the context's own socket.
        let Some(v) = (unsafe { MP_TCP_SK.get_or_create(sk) }) else {
            bump(Reason::RevNatUpdateFailed);
            return;
        };
        // SAFETY: a socket storage value, valid for this run; only connect() writes `revnat`.
        // A connect() on a socket already connecting or connected fails (EALREADY, EISCONN)
        // whatever address it names, as a non-blocking client's second call does: its peer
        // stays the first one's, and so does the entry.
        unsafe {
            if (*v).revnat.svc_id != 0 && (*sk).state != TCP_CLOSE {
                return;
            }
            (*v).revnat = RevNatSk {
                backend_ip_be: backend.ip_be,
                backend_port_be: backend.port_be,
                vip_port_be: frontend.port_be,
                vip_be: frontend.vip_be,
                svc_id: frontend.svc_id,
            };
            (*v).conn.flow.svc_id = 0;
        }
        return;
    }
    let key = RevNatKey {
        socket_cookie: socket_cookie(),
        backend_ip_be: backend.ip_be,
        backend_port_be: backend.port_be,
        _pad0: 0,
    };
    let value = RevNatValue {
        vip_be: frontend.vip_be,
        vip_port_be: frontend.port_be,
        _pad0: 0,
        svc_id: frontend.svc_id,
        _pad1: 0,
    };
    if MP_REVNAT.insert(&key, &value, 0).is_err() {
        bump(Reason::RevNatUpdateFailed);
    }
}

/// Whether getpeername() of a translated TCP socket shows the frontend (see
/// `CONFIG_TCP_GETPEERNAME_OFF`).
#[inline(always)]
fn tcp_getpeername() -> bool {
    MP_CONFIG.get(CONFIG_TCP_GETPEERNAME_OFF).copied().unwrap_or(0) == 0
}

/// At getpeername()/recvmsg(): shows the frontend instead of the backend, while the frontend is
/// still the same service (a frontend deleted, or its address given to another service, must
/// not be reported as this socket's peer).
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext, family: Family, reason: Reason) {
    let sa = ctx.sock_addr;
    let Some(backend_ip_be) = addr::read_ip(sa, family) else {
        return;
    };
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let (backend_port_be, proto) = unsafe { ((*sa).user_port as u16, (*sa).protocol as u8) };
    let found = if proto == PROTO_TCP {
        if !tcp_getpeername() {
            return;
        }
        tcp_frontend(sa, backend_ip_be, backend_port_be)
    } else {
        udp_frontend(ctx, backend_ip_be, backend_port_be)
    };
    let Some((rev, forget)) = found else {
        return;
    };
    let frontend = ServiceKey::new(rev.vip_be, rev.port_be, proto, 0);
    // SAFETY: the value is copied out at once.
    let live = unsafe { MP_SERVICES.get(&frontend) }.is_some_and(|s| s.svc_id == rev.svc_id);
    if !live {
        match forget {
            // Not deleted: the socket's TCP metrics live in the same value.
            // SAFETY: the context's own socket; a socket storage value, valid for this run.
            Forget::Socket => unsafe {
                if let Some(v) = MP_TCP_SK.get(sk(sa)) {
                    (*v).revnat.svc_id = 0;
                }
            },
            Forget::Key(key) => {
                let _ = MP_REVNAT.remove(&key);
            }
        }
        bump(Reason::RevNatStale);
        return;
    }
    addr::write_ip(sa, family, rev.vip_be);
    // SAFETY: recvmsg/getpeername programs may write user_port.
    unsafe { (*sa).user_port = u32::from(rev.port_be) };
    bump(reason);
}

/// How to drop a stale translation.
enum Forget {
    Socket,
    Key(RevNatKey),
}

#[inline(always)]
fn tcp_frontend(sa: *mut bpf_sock_addr, ip_be: u32, port_be: u16) -> Option<(Frontend, Forget)> {
    // SAFETY: the context's own socket; the value is copied out at once.
    let v = unsafe { (*MP_TCP_SK.get(sk(sa))?).revnat };
    // Only for the peer connect() chose.
    if v.svc_id == 0 || v.backend_ip_be != ip_be || v.backend_port_be != port_be {
        return None;
    }
    Some((
        Frontend {
            vip_be: v.vip_be,
            port_be: v.vip_port_be,
            svc_id: v.svc_id,
        },
        Forget::Socket,
    ))
}

#[inline(always)]
fn udp_frontend(ctx: &SockAddrContext, ip_be: u32, port_be: u16) -> Option<(Frontend, Forget)> {
    let key = RevNatKey {
        // SAFETY: the context pointer is valid for the helper.
        socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend_ip_be: ip_be,
        backend_port_be: port_be,
        _pad0: 0,
    };
    // SAFETY: the value is copied out at once.
    let v = unsafe { *MP_REVNAT.get(&key)? };
    Some((
        Frontend {
            vip_be: v.vip_be,
            port_be: v.vip_port_be,
            svc_id: v.svc_id,
        },
        Forget::Key(key),
    ))
}
