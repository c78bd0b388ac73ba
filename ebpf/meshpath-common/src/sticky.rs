//! Per-socket stickiness of unconnected UDP, and the (service, backend) membership set that the
//! programs check remembered choices against (session affinity and UDP stickiness alike).
//!
//! Why a membership set: backend ids are per address and shared by every service that has that
//! address, so "the backend still exists" does not say "it still serves this service". The agent
//! keeps one entry per (service id, backend id) pair its slots name; a remembered choice whose
//! pair is gone is dropped by the program that finds it, in the kernel, at the next packet, instead
//! of the agent scanning the whole LRU after every change (Cilium's affinity match map works the
//! same way).

/// `MP_CONFIG[CONFIG_UDP_STICKY_SEC]`: how long (seconds) an unconnected UDP socket keeps its
/// backend after its last datagram to the service; 0 switches stickiness off (one pick per
/// datagram). Conntrack's default for UDP streams is 120 s, for unreplied flows 30 s.
pub const CONFIG_UDP_STICKY_SEC: u32 = 2;

/// Capacity of the per-socket UDP stickiness LRU.
pub const MAX_UDP_STICKY: u32 = 65_536;
/// Capacity of the (service, backend) membership set: every slot can name a distinct pair.
pub const MAX_SVC_BACKENDS: u32 = crate::MAX_SERVICE_ENTRIES;

pub const MAP_UDP_STICKY: &str = "MP_UDP_STICKY";
pub const MAP_SVC_BACKENDS: &str = "MP_SVC_BACKENDS";
pub const PROG_SOCK_RELEASE: &str = "mp_sock_release";

/// One unconnected UDP socket (by cookie) sending to one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UdpStickyKey {
    pub socket_cookie: u64,
    pub svc_id: u32,
    pub _pad0: u32,
}

/// A service id and a backend id that one of its slots names. The value (a `u8`, always 1) is
/// unused: presence is the answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcBackendKey {
    pub svc_id: u32,
    pub backend_id: u32,
}

const _: () = assert!(core::mem::size_of::<UdpStickyKey>() == 16);
const _: () = assert!(core::mem::size_of::<SvcBackendKey>() == 8);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding: any bit pattern is valid.
unsafe impl aya::Pod for UdpStickyKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, two u32s, no padding.
unsafe impl aya::Pod for SvcBackendKey {}
