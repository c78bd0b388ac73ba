//! tc programs on the pods' host-side veths: ClusterIP translation per packet for senders the
//! socket hooks never see (a process in a pod's network namespace but outside the managed
//! cgroups), and forwarding of pod traffic past the host stack (`bpf_redirect_peer` into a local
//! pod, `bpf_fib_lookup` + `bpf_redirect_neigh` towards the configured pod networks).
//!
//! Kept apart from the uplink's frontends and counters: these programs look up the socket path's
//! ClusterIP frontends (`MP_SERVICES`) and share only the conntrack table (`MP_TC_CT`), under
//! direction values of their own, so an uplink flow and a veth flow never read each other's
//! entries.

/// Local pods' IPv4 address (network order) → ifindex of the pod's host-side veth.
pub const MAP_TC_PODS: &str = "MP_TC_PODS";
/// An LPM trie of destinations (IPv4 prefix, address in network order → 1) forwarded with `bpf_fib_lookup` + `bpf_redirect_neigh`: the
/// cluster's pod networks. Empty: only local pods are forwarded past the host stack.
pub const MAP_TC_FWD_NETS: &str = "MP_TC_FWD_NETS";
/// [`VETH_CFG_FORWARD`] → 1 (on) or 0 (off).
pub const MAP_TC_VETH_CFG: &str = "MP_TC_VETH_CFG";
/// [`VethReason`] → count, per CPU.
pub const MAP_TC_VETH_COUNTERS: &str = "MP_TC_VETH_COUNTERS";

/// On the host side of a pod's veth, packets the pod sends.
pub const PROG_TC_VETH_INGRESS: &str = "mp_tc_veth_in";
/// On the host side of a pod's veth, packets towards the pod that came through the host stack.
pub const PROG_TC_VETH_EGRESS: &str = "mp_tc_veth_eg";

/// Slot of [`MAP_TC_VETH_CFG`]: forwarding past the host stack on (1) or off (0).
pub const VETH_CFG_FORWARD: u32 = 0;
pub const VETH_CFG_SLOTS: u32 = 1;

pub const MAX_TC_PODS: u32 = 4_096;
pub const MAX_TC_FWD_NETS: u32 = 256;

/// `CtKey::dir` of a pod's packet towards a ClusterIP, seen on its veth's ingress.
pub const CT_DIR_VETH_ORIGINAL: u8 = 2;
/// `CtKey::dir` of a backend's reply towards that pod.
pub const CT_DIR_VETH_REPLY: u8 = 3;

/// What the veth programs did. Each value indexes one slot of [`MAP_TC_VETH_COUNTERS`]; every
/// failure path bumps exactly one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VethReason {
    /// A pod's first packet to a ClusterIP its socket did not translate: backend picked, tracked.
    NewFlow = 0,
    /// A later packet of such a flow translated to its backend.
    FlowTranslated = 1,
    /// A backend's reply given the ClusterIP back as its source.
    ReplyReversed = 2,
    /// A FIN or RST of a tracked flow: the entry was marked closing.
    FlowClosing = 3,
    /// A ClusterIP with no endpoint: refused (see `ResetSent`, `UnreachableSent`).
    NoBackend = 4,
    /// Slot 0 said N but a slot in 1..=N was absent (a concurrent update): dropped.
    SlotMissing = 5,
    /// Conntrack entries could not be written: dropped, the sender retries.
    CtUpdateFailed = 6,
    /// Rewriting the packet failed: dropped.
    RewriteFailed = 7,
    /// A ClusterIP steered to the L7 proxy: left to the host stack (no steering on tc yet).
    Steered = 8,
    /// A non-first IPv4 fragment: passed untouched.
    Fragment = 9,
    /// A truncated header: passed untouched.
    Truncated = 10,
    /// Sent straight into a local pod with `bpf_redirect_peer`.
    RedirectPeer = 11,
    /// Sent out with `bpf_fib_lookup` + `bpf_redirect_neigh`.
    RedirectNeigh = 12,
    /// The FIB lookup did not give a forwardable route (local, unreachable, forwarding off):
    /// left to the host stack.
    FibPassed = 13,
    /// A redirect helper refused (the target vanished): left to the host stack.
    RedirectFailed = 14,
    /// A TCP segment to a ClusterIP with no endpoint answered with a RST into the pod.
    ResetSent = 15,
    /// A UDP datagram to a ClusterIP with no endpoint answered with an ICMP port unreachable.
    UnreachableSent = 16,
    /// The refusal could not be built (IP options, a helper failed): the packet was dropped.
    RefusalFailed = 17,
    /// A sender's new flow followed its `sessionAffinity: ClientIP` backend (the uplink's
    /// affinity table, `MP_TC_AFFINITY`).
    AffinityHit = 18,
    /// The affinity entry could not be written: the flow went on without it.
    AffinityUpdateFailed = 19,
    /// A new TCP flow over its Service's `maxConnections` (the counter the socket path and the
    /// uplink share): refused with a RST into the pod.
    ConnLimitRefused = 20,
    /// A counted flow's slot given back at its first FIN or RST (either direction). Slots of
    /// flows whose conntrack entry went first come back through the agent's sweep, counted as
    /// the uplink's `tc_conn_released_swept`.
    ConnReleased = 21,
}

pub const VETH_REASON_COUNT: u32 = 22;

impl VethReason {
    pub const ALL: [VethReason; VETH_REASON_COUNT as usize] = [
        VethReason::NewFlow,
        VethReason::FlowTranslated,
        VethReason::ReplyReversed,
        VethReason::FlowClosing,
        VethReason::NoBackend,
        VethReason::SlotMissing,
        VethReason::CtUpdateFailed,
        VethReason::RewriteFailed,
        VethReason::Steered,
        VethReason::Fragment,
        VethReason::Truncated,
        VethReason::RedirectPeer,
        VethReason::RedirectNeigh,
        VethReason::FibPassed,
        VethReason::RedirectFailed,
        VethReason::ResetSent,
        VethReason::UnreachableSent,
        VethReason::RefusalFailed,
        VethReason::AffinityHit,
        VethReason::AffinityUpdateFailed,
        VethReason::ConnLimitRefused,
        VethReason::ConnReleased,
    ];

    /// Stable snake_case name; `tc_veth_` keeps it apart from the other reasons in one label.
    pub const fn name(self) -> &'static str {
        match self {
            VethReason::NewFlow => "tc_veth_new_flow",
            VethReason::FlowTranslated => "tc_veth_flow_translated",
            VethReason::ReplyReversed => "tc_veth_reply_reversed",
            VethReason::FlowClosing => "tc_veth_flow_closing",
            VethReason::NoBackend => "tc_veth_no_backend",
            VethReason::SlotMissing => "tc_veth_slot_missing",
            VethReason::CtUpdateFailed => "tc_veth_ct_update_failed",
            VethReason::RewriteFailed => "tc_veth_rewrite_failed",
            VethReason::Steered => "tc_veth_steered_passed",
            VethReason::Fragment => "tc_veth_fragment",
            VethReason::Truncated => "tc_veth_truncated",
            VethReason::RedirectPeer => "tc_veth_redirect_peer",
            VethReason::RedirectNeigh => "tc_veth_redirect_neigh",
            VethReason::FibPassed => "tc_veth_fib_passed",
            VethReason::RedirectFailed => "tc_veth_redirect_failed",
            VethReason::ResetSent => "tc_veth_reset_sent",
            VethReason::UnreachableSent => "tc_veth_unreachable_sent",
            VethReason::RefusalFailed => "tc_veth_refusal_failed",
            VethReason::AffinityHit => "tc_veth_affinity_hit",
            VethReason::AffinityUpdateFailed => "tc_veth_affinity_update_failed",
            VethReason::ConnLimitRefused => "tc_veth_conn_limit_refused",
            VethReason::ConnReleased => "tc_veth_conn_released",
        }
    }
}

const _: () = assert!(VethReason::ALL.len() == VETH_REASON_COUNT as usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_veth_reason_once_in_index_order() {
        for (i, r) in VethReason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{}", r.name());
            assert!(r.name().starts_with("tc_veth_"));
        }
        assert_ne!(CT_DIR_VETH_ORIGINAL, crate::tc::CT_DIR_ORIGINAL);
        assert_ne!(CT_DIR_VETH_REPLY, crate::tc::CT_DIR_REPLY);
    }
}
