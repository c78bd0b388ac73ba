//! Istio's TCP metrics (`istio_tcp_*`) measured in the kernel for connections to kernel-path
//! services: sock_ops counts a connection when its client end is established and adds its bytes
//! when it closes, into a per-CPU table keyed by workload pair; while it lives, a TCP socket
//! iterator the agent runs on a timer adds the bytes moved since the last report. Cardinality is
//! bounded by the pairs (client IP, frontend, backend), never by connections; the agent turns IPs
//! into pod workloads at scrape time.

/// `MP_CONFIG[CONFIG_TCP_METRICS]`: 0 when sock_ops records no TCP metrics (`--tcp-metrics
/// false`), 1 when it does.
pub const CONFIG_TCP_METRICS: u32 = 1;

/// The TCP socket iterator that samples live connections (section `iter/tcp`).
pub const PROG_TCP_SAMPLE: &str = "mp_tcp_sample";

/// Globals of the object the agent sets at load time: byte offsets of `sock_common.skc_state`,
/// `tcp_sock.bytes_acked` and `tcp_sock.bytes_received` in the running kernel, read from its BTF
/// (the BPF programs are built without CO-RE relocations, so they cannot name those fields).
pub const GLOBAL_OFF_STATE: &str = "MP_TCP_OFF_STATE";
pub const GLOBAL_OFF_BYTES_ACKED: &str = "MP_TCP_OFF_BYTES_ACKED";
pub const GLOBAL_OFF_BYTES_RECEIVED: &str = "MP_TCP_OFF_BYTES_RECEIVED";

/// Map names (at most 15 characters, see `MAP_SERVICES`).
pub const MAP_TCP_FLOWS: &str = "MP_TCP_FLOWS";

/// Capacity of the per-CPU workload-pair table.
pub const MAX_TCP_FLOWS: u32 = 65_536;

/// One workload pair: the client's address, the frontend it asked for, the backend it got.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpFlowKey {
    pub client_ip_be: u32,
    pub backend_ip_be: u32,
    pub svc_id: u32,
    pub backend_port_be: u16,
    pub _pad0: u16,
}

/// What the pair's connections did, per CPU (summed by the agent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlowStats {
    pub opened: u64,
    pub closed: u64,
    /// Bytes the client sent that the backend acknowledged (`tcp_sock.bytes_acked`).
    pub sent_bytes: u64,
    /// Bytes the client received (`tcp_sock.bytes_received`).
    pub received_bytes: u64,
}

/// A live connection (in its socket's storage, see `TcpSock`): its pair, and the kernel's byte counters as already
/// added to the pair, so a sample taken before the close and the close itself never count a byte
/// twice (both run under the socket's lock, so they see and move these one at a time). The kernel's counters advance with the sequence space, so they include the SYN (in
/// `bytes_acked` at establishment, taken as already reported) and each FIN (subtracted at close
/// from the TCP state the socket closes from).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpConn {
    pub flow: TcpFlowKey,
    pub sent_reported: u64,
    pub received_reported: u64,
    /// `bytes_received` when the socket entered FIN_WAIT2 (`u64::MAX` before): a close from
    /// FIN_WAIT2 with more received since came from the peer's FIN.
    pub fin_wait2_received: u64,
}

const _: () = assert!(core::mem::size_of::<TcpFlowKey>() == 16);
const _: () = assert!(core::mem::size_of::<TcpFlowStats>() == 32);
const _: () = assert!(core::mem::size_of::<TcpConn>() == 40);
