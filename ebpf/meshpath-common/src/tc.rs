//! The tc data path on the node's uplink: per-packet service load balancing for traffic the
//! socket hooks never see (a client outside the node reaching a `NodePort`, an `externalIPs`
//! address or a `LoadBalancer` ingress IP).
//!
//! Kept apart from the socket path's maps on purpose: its frontends are not ClusterIPs (a
//! NodePort matches any of the node's own addresses), its slots differ (they hold only the
//! endpoints the uplink can reach without SNAT, see the README), and a connect from a pod must
//! never be translated by these entries. Its counters have their own array and reason enum, so
//! the socket path's reason numbering never moves.

/// `{frontend, slot}` → [`TcSlot`]. Keys are [`crate::ServiceKey`]s: `vip_be` is the external
/// IP, or [`TC_ANY_NODE_IP`] for a NodePort (it matches every address in [`MAP_TC_NODE_IPS`]).
pub const MAP_TC_SERVICES: &str = "MP_TC_SVC";
/// The node's own IPv4 addresses (network order) → 1: where NodePorts answer. Written by the agent.
pub const MAP_TC_NODE_IPS: &str = "MP_TC_NODE_IPS";
/// Connection tracking of translated flows, both directions (see [`CtKey`]).
pub const MAP_TC_CT: &str = "MP_TC_CT";
/// [`TcReason`] → count, per CPU.
pub const MAP_TC_COUNTERS: &str = "MP_TC_COUNTERS";

pub const PROG_TC_INGRESS: &str = "mp_tc_ingress";
pub const PROG_TC_EGRESS: &str = "mp_tc_egress";
/// Never attached: the agent runs it (`BPF_PROG_TEST_RUN`) with a counted flow's original
/// [`CtKey`] after [`ETH_PAD`] bytes, to give back the connection slot of a flow whose conntrack
/// entry is gone (see [`MAP_TC_COUNTED`]). Returns 1 when it released one.
pub const PROG_TC_CT_RELEASE: &str = "mp_tc_ct_release";
/// Bytes before the key in [`PROG_TC_CT_RELEASE`]'s input: the test run wants an Ethernet header.
pub const ETH_PAD: usize = 14;

/// `connectionPool.tcp.maxConnections` on the uplink and the pod veths: original-direction
/// [`CtKey`] of every TCP flow counted against a limit → the counter it holds a slot of
/// ([`crate::SockLimit`]). A plain hash, not an LRU: an entry leaves only when its slot is given back (the flow's first
/// FIN or RST, or the agent's sweep once the flow's conntrack entry is gone), so a flow the
/// conntrack LRU evicts is still known and released.
pub const MAP_TC_COUNTED: &str = "MP_TC_COUNTED";
/// As many as the conntrack can hold flows.
pub const MAX_TC_COUNTED: u32 = MAX_TC_CT / 2;

/// `vip_be` of a NodePort frontend: any of the node's addresses.
pub const TC_ANY_NODE_IP: u32 = 0;

/// External frontends are few next to ClusterIPs: 16 384 entries (headers and slots), and the
/// map is not preallocated (see the eBPF crate), so an idle tc path costs no kernel memory.
pub const MAX_TC_SERVICE_ENTRIES: u32 = 16_384;
pub const MAX_TC_NODE_IPS: u32 = 64;
/// Two entries per tracked flow: 32 768 concurrent flows. LRU maps are always preallocated,
/// and every agent start creates this one, so it stays modest until a GC and sizing flag exist.
pub const MAX_TC_CT: u32 = 65_536;

/// [`TcSlot::flags`] of a header: `externalTrafficPolicy: Local` (slots hold local endpoints only
/// and the client's address is kept). `Cluster` frontends hold every endpoint; the remote ones
/// carry [`TC_FLAG_REMOTE`].
pub const TC_FLAG_LOCAL: u8 = 1 << 0;
/// [`TcSlot::flags`]: the frontend is a NodePort (else an external or load-balancer IP).
pub const TC_FLAG_NODE_PORT: u8 = 1 << 1;
/// [`TcSlot::flags`] of a backend slot: the endpoint runs on another node. Its flows are
/// source-NATed to the node's address (the address the client sent to), so the replies come
/// back through this node, and forwarded straight out (`bpf_redirect_neigh`): the stack would
/// drop a packet arriving with one of its own addresses as the source.
pub const TC_FLAG_REMOTE: u8 = 1 << 2;

/// SNAT source ports are taken from this range, outside Linux's default ephemeral range
/// (32768-60999) and the NodePort range, so they do not shadow a local socket's replies.
pub const TC_SNAT_PORT_MIN: u16 = 61_000;
pub const TC_SNAT_PORT_MAX: u16 = 65_535;

/// Slot 0 of a frontend: `count` and `svc_id` (the ClusterIP frontend's id, so its name and
/// stats are shared); slots `1..=count`: the backend address, inline so a packet needs one
/// lookup per slot and the socket path's backend table is never read across an agent update.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcSlot {
    pub backend_ip_be: u32,
    pub backend_port_be: u16,
    pub count: u16,
    pub svc_id: u32,
    pub flags: u8,
    pub _pad: [u8; 3],
    /// `sessionAffinity: ClientIP` timeout in seconds (0: none), read from the header.
    pub affinity_sec: u32,
}

/// `sessionAffinity: ClientIP` on the tc path: `{frontend (slot 0), client address}` → the
/// backend its last new flow went to. An LRU: a client that stopped coming ages out.
pub const MAP_TC_AFFINITY: &str = "MP_TC_AFFINITY";
pub const MAX_TC_AFFINITY: u32 = 16_384;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcAffinityKey {
    pub frontend: crate::ServiceKey,
    pub client_be: u32,
}

/// The backend, and the slot it was in: a new flow checks that slot still holds it (one
/// lookup), so an affinity to a departed backend is never followed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcAffinityValue {
    pub backend_ip_be: u32,
    pub backend_port_be: u16,
    pub slot: u16,
    /// `bpf_ktime_get_ns()` of the client's last new flow.
    pub last_ns: u64,
}

/// [`CtKey::dir`]: a client's packet towards a frontend, seen on uplink ingress.
pub const CT_DIR_ORIGINAL: u8 = 0;
/// [`CtKey::dir`]: a backend's reply towards that client (after translation), seen on uplink
/// egress.
pub const CT_DIR_REPLY: u8 = 1;

/// A flow as one direction of it looks on the wire: addresses and ports in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: u16,
}

/// [`CtValue::state`] values.
pub const CT_STATE_OPEN: u8 = 0;
/// A FIN or RST was seen: the userspace GC removes the entry after a grace period (else the
/// LRU ages it out).
pub const CT_STATE_CLOSING: u8 = 1;

/// [`CtValue::flags`]: the flow is source-NATed (its backend is on another node); `nat_*` hold
/// the node's address and port (original direction) or the client's (reply direction).
pub const CT_FLAG_SNAT: u8 = 1 << 0;
/// [`CtValue::flags`], both directions: the flow holds a connection slot (an entry in
/// [`MAP_TC_COUNTED`]), so its first FIN or RST gives it back. Flows without it skip that map.
pub const CT_FLAG_COUNTED: u8 = 1 << 1;

/// For an original-direction key: the backend to send to. For a reply key: the frontend
/// address to write back as the source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValue {
    pub addr_be: u32,
    pub port_be: u16,
    pub state: u8,
    pub flags: u8,
    pub svc_id: u32,
    /// With [`CT_FLAG_SNAT`]: original direction, the source written over the client's
    /// (node address, allocated port); reply direction, the destination written back (client).
    pub nat_addr_be: u32,
    pub nat_port_be: u16,
    pub _pad: u16,
    pub _pad1: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet: the userspace GC's idle clock.
    pub last_seen_ns: u64,
}

const _: () = assert!(core::mem::size_of::<TcSlot>() == 20);
const _: () = assert!(core::mem::size_of::<TcAffinityKey>() == 16);
const _: () = assert!(core::mem::size_of::<TcAffinityValue>() == 16);
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);
const _: () = assert!(core::mem::size_of::<CtValue>() == 32);

/// What the tc programs did. Each value indexes one slot of [`MAP_TC_COUNTERS`]; every failure
/// path bumps exactly one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcReason {
    /// A client's first packet to a frontend: a backend was picked and the flow tracked.
    NewFlow = 0,
    /// A packet of a tracked flow translated to its backend.
    FlowTranslated = 1,
    /// A backend's reply translated back to the frontend's address.
    ReplyReversed = 2,
    /// A frontend with no (local) endpoint: refused (see `ResetSent`, `UnreachableSent`).
    NoBackend = 3,
    /// Slot 0 said N but a slot in 1..=N was absent (a concurrent update): dropped.
    SlotMissing = 4,
    /// Conntrack entries could not be written (map error): dropped, the client retries.
    CtUpdateFailed = 5,
    /// Rewriting the packet (store or checksum helper) failed: dropped.
    RewriteFailed = 6,
    /// An IPv4 fragment other than the first to a frontend port: cannot be matched, passed.
    Fragment = 7,
    /// A truncated header: passed untouched.
    Truncated = 8,
    /// A FIN or RST of a tracked TCP flow: the entry was marked closing.
    FlowClosing = 9,
    /// A packet of a flow to another node's endpoint, source-NATed and forwarded out.
    SnatForwarded = 10,
    /// A reply from another node's endpoint, un-NATed and sent back to the client.
    SnatReplyReversed = 11,
    /// No free SNAT port towards that backend: dropped.
    SnatPortsExhausted = 12,
    /// No route (FIB lookup) towards a remote backend or back to a client: dropped.
    FibFailed = 13,
    /// A TCP packet refused with a RST (no endpoint, or a flow whose backend is gone).
    ResetSent = 14,
    /// A UDP datagram refused with an ICMP port unreachable (no endpoint).
    UnreachableSent = 15,
    /// A refusal (RST or ICMP) could not be built or sent: the packet was dropped.
    RefusalFailed = 16,
    /// A TCP packet other than a SYN to a frontend with no tracked flow (its backend was
    /// removed, or the entry aged out): refused with a RST instead of starting a new flow.
    StaleFlow = 17,
    /// A client's new flow followed its `sessionAffinity: ClientIP` backend.
    AffinityHit = 18,
    /// The affinity entry could not be written (map error): the flow went on without it.
    AffinityUpdateFailed = 19,
    /// A new TCP flow over its Service's `maxConnections` (the count the socket path shares):
    /// refused with a RST.
    ConnLimitRefused = 20,
    /// A counted flow's record could not be written (`MP_TC_COUNTED` full): the flow went on
    /// uncounted.
    ConnLimitUntracked = 21,
    /// A counted flow's slot given back at its first FIN or RST.
    ConnReleased = 22,
    /// A counted flow's slot given back by the agent's sweep: its conntrack entry was evicted
    /// by the LRU or removed by the sweep before a FIN or RST was seen.
    ConnReleasedSwept = 23,
}

pub const TC_REASON_COUNT: u32 = 24;

impl TcReason {
    pub const ALL: [TcReason; TC_REASON_COUNT as usize] = [
        TcReason::NewFlow,
        TcReason::FlowTranslated,
        TcReason::ReplyReversed,
        TcReason::NoBackend,
        TcReason::SlotMissing,
        TcReason::CtUpdateFailed,
        TcReason::RewriteFailed,
        TcReason::Fragment,
        TcReason::Truncated,
        TcReason::FlowClosing,
        TcReason::SnatForwarded,
        TcReason::SnatReplyReversed,
        TcReason::SnatPortsExhausted,
        TcReason::FibFailed,
        TcReason::ResetSent,
        TcReason::UnreachableSent,
        TcReason::RefusalFailed,
        TcReason::StaleFlow,
        TcReason::AffinityHit,
        TcReason::AffinityUpdateFailed,
        TcReason::ConnLimitRefused,
        TcReason::ConnLimitUntracked,
        TcReason::ConnReleased,
        TcReason::ConnReleasedSwept,
    ];

    /// Stable snake_case name, with a `tc_` prefix so it never collides with a socket-path
    /// reason in the shared `reason` label.
    pub const fn name(self) -> &'static str {
        match self {
            TcReason::NewFlow => "tc_new_flow",
            TcReason::FlowTranslated => "tc_flow_translated",
            TcReason::ReplyReversed => "tc_reply_reversed",
            TcReason::NoBackend => "tc_no_backend",
            TcReason::SlotMissing => "tc_slot_missing",
            TcReason::CtUpdateFailed => "tc_ct_update_failed",
            TcReason::RewriteFailed => "tc_rewrite_failed",
            TcReason::Fragment => "tc_fragment",
            TcReason::Truncated => "tc_truncated",
            TcReason::FlowClosing => "tc_flow_closing",
            TcReason::SnatForwarded => "tc_snat_forwarded",
            TcReason::SnatReplyReversed => "tc_snat_reply_reversed",
            TcReason::SnatPortsExhausted => "tc_snat_ports_exhausted",
            TcReason::FibFailed => "tc_fib_failed",
            TcReason::ResetSent => "tc_reset_sent",
            TcReason::UnreachableSent => "tc_unreachable_sent",
            TcReason::RefusalFailed => "tc_refusal_failed",
            TcReason::StaleFlow => "tc_stale_flow",
            TcReason::AffinityHit => "tc_affinity_hit",
            TcReason::AffinityUpdateFailed => "tc_affinity_update_failed",
            TcReason::ConnLimitRefused => "tc_conn_limit_refused",
            TcReason::ConnLimitUntracked => "tc_conn_limit_untracked",
            TcReason::ConnReleased => "tc_conn_released",
            TcReason::ConnReleasedSwept => "tc_conn_released_swept",
        }
    }
}

const _: () = assert!(TcReason::ALL.len() == TC_REASON_COUNT as usize);

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: repr(C), Copy, integers only, all padding explicit.
    unsafe impl aya::Pod for TcSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TcAffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TcAffinityValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_tc_reason_once_in_index_order() {
        for (i, r) in TcReason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{}", r.name());
            assert!(r.name().starts_with("tc_"));
        }
    }
}
