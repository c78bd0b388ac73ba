//! Kernel connection limits (`connectionPool.tcp.maxConnections`): what a connection counts
//! against, and the per-route-destination groups.
//!
//! Semantics follow Envoy as Istio configures it: every route destination (service + subset) is
//! its own Envoy cluster with its own connection breaker, whose threshold is the subset's merged
//! traffic policy (the subset's `connectionPool.tcp.maxConnections`, else the DestinationRule's
//! top-level one). So:
//! - a connect to a plain frontend counts against that frontend's service-wide limit
//!   (`MP_CONN_MAX`/`MP_CONN_ACTIVE`, indexed by service id);
//! - a connect to a frontend with VirtualService `tcp:` weighted slots (header flag
//!   [`SVC_FLAG_ROUTE_LIMITS`](crate::SVC_FLAG_ROUTE_LIMITS)) counts against whatever the chosen
//!   slot's entry in `MP_SLOT_GRP` names: a subset's group (`MP_GRP_MAX`/`MP_GRP_ACTIVE`, indexed
//!   by group id), or, for a destination without a subset, that service port's own service-wide
//!   counter (the same Envoy cluster as plain connects to it). A slot without an entry is
//!   unlimited, as an Envoy cluster without `maxConnections` is (Istio sets it to 2^32-1).

/// Group ids index the `MP_GRP_*` arrays: `1..MAX_LIMIT_GROUPS` (0 means "none"). One group per
/// route destination (service, port, subset) with a limit, shared by every frontend routing to it.
pub const MAX_LIMIT_GROUPS: u32 = 4_096;

/// Map names (at most 15 characters, see `MAP_SERVICES`).
pub const MAP_SLOT_GRP: &str = "MP_SLOT_GRP";
pub const MAP_GRP_MAX: &str = "MP_GRP_MAX";
pub const MAP_GRP_ACTIVE: &str = "MP_GRP_ACTIVE";
pub const MAP_GRP_REFUSED: &str = "MP_GRP_REFUSED";
pub const MAP_GRP_NAMES: &str = "MP_GRP_NAMES";
/// socket cookie → [`SockLimit`]. Named apart from the earlier `MP_SOCK_SVC` (u32 values): a pinned
/// map of the old layout is never reused with the new value size.
pub const MAP_SOCK_LIMIT: &str = "MP_SOCK_LIMIT";

/// Capacity of the slot → limit table: weighted frontends have 100 slots each.
pub const MAX_SLOT_LIMITS: u32 = 65_536;

/// The counter a connection is counted against: a service id, or a group id, never both (both 0:
/// not counted). Value of `MP_SLOT_GRP` (what a slot's connections count against) and of
/// `MP_SOCK_LIMIT` (what a tracked socket must release when it closes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockLimit {
    /// Index into `MP_CONN_MAX`/`MP_CONN_ACTIVE`, or 0.
    pub svc_id: u32,
    /// Index into `MP_GRP_MAX`/`MP_GRP_ACTIVE`/`MP_GRP_REFUSED`, or 0.
    pub group_id: u32,
}

impl SockLimit {
    pub const NONE: Self = Self {
        svc_id: 0,
        group_id: 0,
    };

    pub const fn service(svc_id: u32) -> Self {
        Self {
            svc_id,
            group_id: 0,
        }
    }

    pub const fn group(group_id: u32) -> Self {
        Self {
            svc_id: 0,
            group_id,
        }
    }
}

const _: () = assert!(core::mem::size_of::<SockLimit>() == 8);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, two u32s, no padding: any bit pattern is valid.
unsafe impl aya::Pod for SockLimit {}
