//! Source NAT for flows to another node's endpoint: a free port on the node's address is
//! claimed by inserting the reply entry with `BPF_NOEXIST`, so two CPUs never hand out the same
//! `{backend, node address, port}`.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use meshpath_common::tc::{CtKey, CtValue, TcReason, TC_SNAT_PORT_MAX, TC_SNAT_PORT_MIN};

use super::maps::MP_TC_CT;

/// Random probes before giving up: the range holds 4 536 ports per backend and protocol.
const PROBES: u32 = 8;

/// Writes `reply` (its `dport_be` set to a free SNAT port) → `value`; returns the port.
#[inline(always)]
pub fn claim_port(reply: &mut CtKey, value: &CtValue) -> Result<u16, TcReason> {
    let range = (TC_SNAT_PORT_MAX - TC_SNAT_PORT_MIN) as u32 + 1;
    for _ in 0..PROBES {
        // SAFETY: no preconditions.
        let r = unsafe { bpf_get_prandom_u32() };
        let port_be = (TC_SNAT_PORT_MIN + (r % range) as u16).to_be();
        reply.dport_be = port_be;
        if MP_TC_CT.insert(&*reply, value, BPF_NOEXIST as u64).is_ok() {
            return Ok(port_be);
        }
    }
    Err(TcReason::SnatPortsExhausted)
}
