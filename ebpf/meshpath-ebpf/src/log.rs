//! Debug events through aya-log (`meshpath agent --bpf-log true`). Every call checks aya-log's
//! `AYA_LOG_LEVEL`, a read-only global the agent sets when it loads the object (0 unless the
//! switch is on): the verifier knows its value and removes the logging code of an object loaded
//! with logging off, so the fast path pays nothing.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::debug;
use meshpath_common::Reason;

#[inline(always)]
pub fn translated<C: EbpfContext>(ctx: &C, svc_id: u32, backend_ip_be: u32, backend_port_be: u16) {
    debug!(
        ctx,
        "connect translated: service {} to {:i}:{}",
        svc_id,
        u32::from_be(backend_ip_be),
        u16::from_be(backend_port_be)
    );
}

#[inline(always)]
pub fn refused<C: EbpfContext>(ctx: &C, svc_id: u32, reason: Reason) {
    debug!(
        ctx,
        "connect refused: service {} reason {}", svc_id, reason as u32
    );
}

#[inline(always)]
pub fn sock_insert_failed<C: EbpfContext>(ctx: &C, local_port: u16, remote_port: u16) {
    debug!(
        ctx,
        "sockhash insert failed: local port {} remote port {}", local_port, remote_port
    );
}
