//! Every BPF map key and value, capacity, name and flag that meshpath's eBPF programs and its agent
//! share. `no_std` so the eBPF crate can use it; `aya::Pod` impls only behind the `user` feature.
//!
//! Rules for the types here: `#[repr(C)]`, `Copy`, explicit padding fields (the kernel compares keys
//! byte by byte, so implicit padding would make equal keys differ), byte order in field names
//! (`_be` = network order, as the kernel hands it to sock_addr programs), and a compile-time size
//! assertion per type so both sides fail to build if a layout drifts.
#![no_std]

pub mod counters;
pub mod limits;
pub mod live;
pub mod policy;
pub mod sticky;
pub mod tc;
pub mod tc_veth;
pub mod tcp_metrics;

pub use counters::{Reason, ServiceStats, REASON_COUNT};
pub use limits::{
    SockLimit, MAP_GRP_ACTIVE, MAP_GRP_MAX, MAP_GRP_NAMES, MAP_GRP_REFUSED, MAP_SLOT_GRP,
    MAP_SOCK_LIMIT, MAX_LIMIT_GROUPS, MAX_SLOT_LIMITS,
};
pub use sticky::{
    SvcBackendKey, UdpStickyKey, CONFIG_UDP_STICKY_SEC, MAP_SVC_BACKENDS, MAP_UDP_STICKY,
    MAX_SVC_BACKENDS, MAX_UDP_STICKY, PROG_SOCK_RELEASE,
};
pub use tcp_metrics::{
    TcpConn, TcpFlowKey, TcpFlowStats, CONFIG_TCP_METRICS, GLOBAL_OFF_BYTES_ACKED,
    GLOBAL_OFF_BYTES_RECEIVED, GLOBAL_OFF_STATE, MAP_TCP_FLOWS, MAX_TCP_FLOWS, PROG_TCP_SAMPLE,
};

/// IP protocol numbers as stored in [`ServiceKey::proto`] and [`Backend::proto`].
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Capacity of [`MAP_SERVICES`]: frontends times (slots + 1). Sized for 10 000 single-port
/// Services with 10 endpoints each (110 000 entries), issue 6's scale target.
pub const MAX_SERVICE_ENTRIES: u32 = 131_072;
/// Service ids are indexes into array maps (round-robin state, per-service stats), so they are
/// dense and bounded: `1..MAX_SERVICE_IDS` (0 means "none"). One id per frontend
/// (ClusterIP:port). The per-CPU stats array costs 40 B × this × CPUs.
pub const MAX_SERVICE_IDS: u32 = 16_384;
/// Capacity of [`MAP_BACKENDS`]; backend ids are `1..=MAX_BACKENDS`.
pub const MAX_BACKENDS: u32 = 131_072;
/// The backend id of a slot whose route destination has no endpoint (a subset no
/// DestinationRule defines, a destination without a ready pod): a connect landing on it is
/// refused and counted as `no_backend`, as Envoy's TCP proxy closes a connection whose weighted
/// cluster is missing or empty. Real backend ids start at 1.
pub const NO_ENDPOINT_BACKEND_ID: u32 = 0;
/// Most backends one frontend may carry (slots `1..=MAX_SLOTS`).
pub const MAX_SLOTS: u16 = 1_024;
/// LRU capacity for session affinity entries.
pub const MAX_AFFINITY: u32 = 65_536;
/// LRU capacity for reverse translation entries (one per translated socket and backend).
pub const MAX_REVNAT: u32 = 262_144;

/// Map names: the ELF symbol names in the eBPF object and the file names under the pin directory.
/// The kernel keeps at most 15 characters of a map name, so they stay short.
pub const MAP_SERVICES: &str = "MP_SERVICES";
pub const MAP_BACKENDS: &str = "MP_BACKENDS";
pub const MAP_RR: &str = "MP_RR";
pub const MAP_AFFINITY: &str = "MP_AFFINITY";
pub const MAP_REVNAT: &str = "MP_REVNAT";
/// What a translated TCP socket carries in its own storage ([`TcpSock`]), freed with the socket.
pub const MAP_TCP_SK: &str = "MP_TCP_SK";
pub const MAP_COUNTERS: &str = "MP_COUNTERS";
pub const MAP_SVC_STATS: &str = "MP_SVC_STATS";
pub const MAP_SVC_NAMES: &str = "MP_SVC_NAMES";
pub const MAP_SOCKS: &str = "MP_SOCKS";
pub const MAP_SOCK_FALLBACK: &str = "MP_SOCK_FALLBK";
pub const MAP_CONFIG: &str = "MP_CONFIG";
pub const MAP_CONN_MAX: &str = "MP_CONN_MAX";
pub const MAP_CONN_ACTIVE: &str = "MP_CONN_ACTIVE";

/// Program names (the Rust function names in the eBPF crate).
pub const PROG_CONNECT4: &str = "mp_connect4";
pub const PROG_SENDMSG4: &str = "mp_sendmsg4";
pub const PROG_RECVMSG4: &str = "mp_recvmsg4";
pub const PROG_GETPEERNAME4: &str = "mp_getpeername4";
pub const PROG_CONNECT6: &str = "mp_connect6";
pub const PROG_SENDMSG6: &str = "mp_sendmsg6";
pub const PROG_RECVMSG6: &str = "mp_recvmsg6";
pub const PROG_GETPEERNAME6: &str = "mp_getpeername6";
pub const PROG_SOCKOPS: &str = "mp_sockops";
pub const PROG_SKMSG: &str = "mp_skmsg";

/// Capacity of the socket-redirection SOCKHASH (both ends of every same-node connection).
pub const MAX_SOCKS: u32 = 65_536;
/// Capacity of the LRU set of sockets that must never be redirected (see [`MAP_SOCK_FALLBACK`]).
pub const MAX_SOCK_FALLBACK: u32 = 65_536;

/// Slots of the `MP_CONFIG` array (u32 each), written by the agent and `meshpath redirect`.
pub const CONFIG_SLOTS: u32 = 4;
/// `MP_CONFIG[CONFIG_REDIRECT]`: whether new same-node connections are redirected. A
/// per-connection switch (read when a connection is established), never per message: switching a
/// live connection between the TCP path and the redirect path could reorder its bytes.
pub const CONFIG_REDIRECT: u32 = 0;
/// `MP_CONFIG[CONFIG_TCP_GETPEERNAME_OFF]`: 1 when getpeername() of a TCP socket connected through
/// a ClusterIP shows the backend (`--tcp-getpeername false`); 0, the default (and what a slot
/// never written holds), shows the ClusterIP:port as kube-proxy's DNAT does. Off, connect4 gives a
/// TCP socket no storage (`TcpSock`) unless the TCP metrics need it: creating it is most of what
/// a translated connect costs.
pub const CONFIG_TCP_GETPEERNAME_OFF: u32 = 3;
/// [`CONFIG_REDIRECT`] values: the feature is off (agent flag), on, or paused at run time.
pub const REDIRECT_OFF: u32 = 0;
pub const REDIRECT_ON: u32 = 1;
pub const REDIRECT_PAUSED: u32 = 2;
/// The low bits of [`CONFIG_REDIRECT`]: off, on or paused.
pub const REDIRECT_STATE_MASK: u32 = 3;
/// [`CONFIG_REDIRECT`] flag, with on or paused: only sockets known to be safe are redirected
/// (those of opted-in pods, [`MAP_REDIRECT_PODS`], and the node proxy's own), not every
/// socket of the managed cgroups. A redirected socket's blocking `recv()` can return EAGAIN
/// (`tcp_bpf_recvmsg`), which blocking clients take for an error. A program that predates the
/// flag matches neither value and redirects nothing: a downgrade is safe.
pub const REDIRECT_OPT_IN: u32 = 4;

/// Pod IPv4 addresses (network order) whose sockets may be redirected in the opt-in scope:
/// pods annotated `meshpath.io/socket-redirect: "true"` (or in a namespace so annotated).
/// Written by the agent.
pub const MAP_REDIRECT_PODS: &str = "MP_REDIR_PODS";
pub const MAX_REDIRECT_PODS: u32 = 65_536;
/// The node proxy's listening address range, for the opt-in scope: slot
/// [`REDIRECT_PROXY_IP`] its IPv4 address (network order, 0: no proxy), slots
/// [`REDIRECT_PROXY_PORT_FIRST`]..=[`REDIRECT_PROXY_PORT_LAST`] its listener ports (host
/// order). An accepted socket whose local address falls in it is the proxy's. (A sockhash lookup
/// of the listener, as connect4 does, would hand sock_ops a referenced socket it has no helper
/// to release.) Written by the agent.
pub const MAP_REDIRECT_PROXY: &str = "MP_REDIR_PROXY";
pub const REDIRECT_PROXY_IP: u32 = 0;
pub const REDIRECT_PROXY_PORT_FIRST: u32 = 1;
pub const REDIRECT_PROXY_PORT_LAST: u32 = 2;
pub const REDIRECT_PROXY_SLOTS: u32 = 3;
/// cgroup ids whose connecting sockets may be redirected in the opt-in scope: the agent's own
/// (the node proxy's connections to backends). Written by the agent.
pub const MAP_REDIRECT_CGROUPS: &str = "MP_REDIR_CGRP";
pub const MAX_REDIRECT_CGROUPS: u32 = 64;
/// Socket cookies that connect4 saw connecting from a [`MAP_REDIRECT_CGROUPS`] cgroup (the
/// only place that runs in the connecting task), read once by sock_ops when they establish.
pub const MAP_REDIRECT_COOKIES: &str = "MP_REDIR_COOK";
pub const MAX_REDIRECT_COOKIES: u32 = 65_536;

/// Capacity of the socket → service table of the kernel connection limit (TCP sockets of limited
/// services only). A regular hash, not LRU: an evicted entry would never be decremented.
pub const MAX_TRACKED_SOCKS: u32 = 262_144;

/// [`ServiceValue::flags`]: pick backends in turn instead of at random.
pub const SVC_FLAG_ROUND_ROBIN: u8 = 1 << 0;
/// [`ServiceValue::flags`]: `sessionAffinity: ClientIP`, keyed by network-namespace cookie.
pub const SVC_FLAG_AFFINITY: u8 = 1 << 1;
/// [`ServiceValue::flags`]: the slots are VirtualService `tcp:` route destinations, each counted
/// against its own connection limit (`MP_SLOT_GRP`, see [`limits`]), never the frontend's own.
pub const SVC_FLAG_ROUTE_LIMITS: u8 = 1 << 2;
/// [`ServiceValue::flags`]: the frontend is a DNS resolver's address (`ip:53`) and its one
/// backend the agent's DNS listener for that resolver; the programs count such steering apart.
pub const SVC_FLAG_DNS: u8 = 1 << 3;
/// [`ServiceValue::flags`]: the frontend needs the node proxy (L7 rules). Its header's
/// `backend_id` names the proxy listener (a backend id); its slots `1..=count` hold the service's
/// own endpoints. connect4 sends a connection to the listener while a proxy socket listens on it
/// (`MP_PROXY_SOCKS`), and otherwise balances it over the slots (or refuses it with
/// [`SVC_FLAG_FAIL_CLOSED`]). A program that predates the flag ignores it and balances over the
/// slots: an agent downgrade degrades to L4, never to a dead port.
pub const SVC_FLAG_STEERED: u8 = 1 << 4;
/// [`ServiceValue::flags`], with [`SVC_FLAG_STEERED`]: no L4 fallback while the proxy is down;
/// connects are refused at once instead (L7 rules are never bypassed).
pub const SVC_FLAG_FAIL_CLOSED: u8 = 1 << 5;

/// The node proxy's listening sockets, keyed by their address as a [`Backend`] (the steered
/// frontends' header `backend_id` names it). The agent inserts each listener when it opens it;
/// the kernel removes a socket from a sockhash when it closes, so an entry exists exactly while
/// a proxy listens there, however the agent went away.
pub const MAP_PROXY_SOCKS: &str = "MP_PROXY_SOCKS";
/// Capacity of [`MAP_PROXY_SOCKS`]: one listener per steered frontend at most.
pub const MAX_PROXY_SOCKS: u32 = 16_384;

/// A frontend (ClusterIP, port, protocol) and a slot. Slot 0 is the frontend's header (backend
/// count, flags, service id); slots `1..=count` each name one backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub _pad0: u8,
    pub slot: u16,
    pub _pad1: u16,
}

/// In slot 0: `count`, `flags`, `svc_id`, `affinity_timeout_sec`; in slots `1..=count`: `backend_id`
/// (the other fields repeat the header so a reader never needs two lookups for the service id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    pub backend_id: u32,
    pub count: u16,
    pub flags: u8,
    /// For `meshpath status` only, never read by the programs: see [`policy`].
    pub policy: u8,
    pub svc_id: u32,
    pub affinity_timeout_sec: u32,
    /// The address `backend_id` names (as in `MP_BACKENDS`), copied into the entry so connect4
    /// reaches a new connection's backend with one lookup, not two. In slot 0 the proxy
    /// listener of a steered frontend, else [`Backend::NONE`].
    pub backend: Backend,
}

/// A backend, by id: where translated sockets go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub ip_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub _pad0: u8,
}

impl Backend {
    /// No address (a header that names no listener).
    pub const NONE: Backend = Backend {
        ip_be: 0,
        port_be: 0,
        proto: 0,
        _pad0: 0,
    };
}

/// Session affinity: which backend a client (network namespace) was given for a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub netns_cookie: u64,
    pub svc_id: u32,
    pub _pad0: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// The slot that backend was picked from, so a connection kept on it by affinity counts
    /// against that slot's route-destination limit. 0 in entries written before slots were kept.
    pub slot: u16,
    pub _pad0: u16,
    /// `bpf_ktime_get_ns()` of the last connection that used this entry.
    pub last_used_ns: u64,
}

/// Reverse translation: a translated socket (by cookie) talking to a backend address, so
/// `getpeername()` and `recvmsg()` can show the ClusterIP the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    pub socket_cookie: u64,
    pub backend_ip_be: u32,
    pub backend_port_be: u16,
    pub _pad0: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatValue {
    pub vip_be: u32,
    pub vip_port_be: u16,
    pub _pad0: u16,
    pub svc_id: u32,
    pub _pad1: u32,
}

/// Reverse translation of a translated TCP socket (see [`TcpSock`]). The backend is kept to check
/// that the peer a program sees is the one connect() chose. Unconnected and connected UDP sockets
/// keep [`RevNatKey`] entries instead: one socket may talk to several services.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatSk {
    pub backend_ip_be: u32,
    pub backend_port_be: u16,
    pub vip_port_be: u16,
    pub vip_be: u32,
    pub svc_id: u32,
}

/// The state of a TCP socket whose connect() was translated, in the socket's own storage
/// (`MP_TCP_SK`, a `BPF_MAP_TYPE_SK_STORAGE`): written by connect4, read by getpeername and by
/// sock_ops, which fills `conn` in place when the connection is established and counted for the
/// TCP metrics. One value per socket, reached from the socket without hashing or bucket locks,
/// and freed by the kernel with the socket: nothing ages it out, nothing prunes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpSock {
    pub revnat: RevNatSk,
    /// `conn.flow.svc_id` is 0 while the connection is not counted (not established yet, TCP
    /// metrics off, or closed and already reported).
    pub conn: TcpConn,
}

/// One end of a TCP connection, as sock_ops and sk_msg see it: addresses in network order,
/// ports in host order (the two contexts encode ports differently; both are normalised to this).
/// The peer of `{l, r, lp, rp}` is `{r, l, rp, lp}`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub local_ip_be: u32,
    pub remote_ip_be: u32,
    pub local_port: u16,
    pub remote_port: u16,
}

impl SockKey {
    /// The key under which the other end of this connection is stored.
    pub const fn peer(self) -> Self {
        Self {
            local_ip_be: self.remote_ip_be,
            remote_ip_be: self.local_ip_be,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

/// Per-service round-robin cursor, in an array indexed by service id. 64 bits because the BPF
/// target's `core` only offers 64-bit atomics.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RoundRobinState {
    pub next: u64,
}

/// `namespace/name:port` of a frontend, by service id. No program reads it: it lives in a pinned
/// map so `meshpath status` can name what it prints from the maps alone, agent running or not.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName {
    /// UTF-8, NUL-padded; longer names are cut at a character boundary.
    pub bytes: [u8; SERVICE_NAME_LEN],
}

pub const SERVICE_NAME_LEN: usize = 128;

impl ServiceName {
    pub fn new(name: &str) -> Self {
        let mut bytes = [0u8; SERVICE_NAME_LEN];
        let mut end = name.len().min(SERVICE_NAME_LEN);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
        Self { bytes }
    }

    pub fn as_str(&self) -> &str {
        let len = self
            .bytes
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(SERVICE_NAME_LEN);
        core::str::from_utf8(&self.bytes[..len]).unwrap_or("<invalid utf-8>")
    }
}

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 12);
const _: () = assert!(core::mem::size_of::<ServiceName>() == SERVICE_NAME_LEN);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 24);
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 16);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);
const _: () = assert!(core::mem::size_of::<RevNatKey>() == 16);
const _: () = assert!(core::mem::size_of::<RevNatValue>() == 16);
const _: () = assert!(core::mem::size_of::<RevNatSk>() == 16);
const _: () = assert!(core::mem::size_of::<TcpSock>() == 56);
const _: () = assert!(core::mem::size_of::<RoundRobinState>() == 8);
const _: () = assert!(core::mem::size_of::<SockKey>() == 12);

impl ServiceKey {
    pub const fn new(vip_be: u32, port_be: u16, proto: u8, slot: u16) -> Self {
        Self {
            vip_be,
            port_be,
            proto,
            _pad0: 0,
            slot,
            _pad1: 0,
        }
    }

    /// The same frontend at another slot.
    pub const fn with_slot(self, slot: u16) -> Self {
        Self { slot, ..self }
    }
}

/// An IPv4 address as the kernel stores it in `user_ip4` (network order, read as a native u32).
pub const fn ipv4_be(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The octets of an address stored by [`ipv4_be`].
pub const fn ipv4_octets(ip_be: u32) -> [u8; 4] {
    ip_be.to_ne_bytes()
}

/// A port in network order, as the low 16 bits of `user_port` hold it.
pub const fn port_be(port: u16) -> u16 {
    port.to_be()
}

/// The host-order port of a [`port_be`] value.
pub const fn port_host(port_be: u16) -> u16 {
    u16::from_be(port_be)
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;

    // SAFETY: every type is repr(C), Copy, made only of integers, with all padding explicit, so any
    // bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for RevNatKey {}
    unsafe impl aya::Pod for RevNatValue {}
    unsafe impl aya::Pod for RoundRobinState {}
    unsafe impl aya::Pod for ServiceStats {}
    unsafe impl aya::Pod for ServiceName {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for TcpFlowKey {}
    unsafe impl aya::Pod for TcpFlowStats {}
    unsafe impl aya::Pod for TcpConn {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_helpers_match_the_kernel_layout() {
        // 10.96.0.1:80 as the kernel's sock_addr context holds it: bytes in wire order.
        let ip = ipv4_be([10, 96, 0, 1]);
        assert_eq!(ip.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(ipv4_octets(ip), [10, 96, 0, 1]);
        assert_eq!(port_be(80).to_ne_bytes(), [0, 80]);
        assert_eq!(port_host(port_be(8080)), 8080);
    }

    #[test]
    fn service_names_round_trip_and_cut_at_char_boundaries() {
        assert_eq!(
            ServiceName::new("default/web:http").as_str(),
            "default/web:http"
        );
        let long = "é".repeat(100); // 200 bytes
        let cut = ServiceName::new(&long);
        assert_eq!(cut.as_str().len(), 128);
        assert!(cut.as_str().chars().all(|c| c == 'é'));
    }

    #[test]
    fn with_slot_keeps_the_frontend() {
        let k = ServiceKey::new(1, 2, PROTO_TCP, 0).with_slot(7);
        assert_eq!((k.vip_be, k.port_be, k.proto, k.slot), (1, 2, PROTO_TCP, 7));
    }
}
