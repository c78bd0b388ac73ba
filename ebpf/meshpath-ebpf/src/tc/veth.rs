//! The pods' host-side veths. Ingress (packets a pod sends): a backend's reply of a tracked flow
//! gets its ClusterIP back as the source; a packet to a ClusterIP (which a translated socket
//! never carries: its destination is already the backend) is translated and tracked; then the
//! packet is forwarded past the host stack when the switch is on (`forward`). Egress (packets
//! the host stack hands the pod): replies of tracked flows that arrived another way (a backend
//! on another node, forwarding off) are reversed there.
//!
//! A new flow's backend follows `sessionAffinity: ClientIP` and a new TCP flow takes a slot of
//! its Service's `maxConnections` with the uplink's own modules (`affinity`, `limit`): one
//! affinity table, one counter per Service, one record of counted flows.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
    programs::TcContext,
};
use meshpath_common::{
    tc::{CtKey, CtValue, TcReason, CT_FLAG_COUNTED, CT_STATE_CLOSING, CT_STATE_OPEN},
    tc_veth::{
        VethReason, CT_DIR_VETH_ORIGINAL, CT_DIR_VETH_REPLY, MAX_TC_FWD_NETS, MAX_TC_PODS,
        VETH_CFG_FORWARD, VETH_CFG_SLOTS, VETH_REASON_COUNT,
    },
    Backend, ServiceKey, ServiceValue, NO_ENDPOINT_BACKEND_ID, PROTO_TCP, SVC_FLAG_AFFINITY,
    SVC_FLAG_STEERED,
};

use super::affinity;
use super::forward;
use super::limit::{self, Admission, Slot};
use super::maps::MP_TC_CT;
use super::nat::{self, End, Packet};
use super::refuse;
use super::{TC_ACT_OK, TC_ACT_SHOT};
use crate::lb;
use crate::maps::{MP_SERVICES, NO_PREALLOC};

/// Local pod address → its host-side veth's ifindex.
#[map]
pub static MP_TC_PODS: HashMap<u32, u32> = HashMap::pinned(MAX_TC_PODS, NO_PREALLOC);

/// Pod networks reached through `bpf_fib_lookup` + `bpf_redirect_neigh`. (An LPM trie must
/// not be preallocated.)
#[map]
pub static MP_TC_FWD_NETS: LpmTrie<u32, u32> = LpmTrie::pinned(MAX_TC_FWD_NETS, NO_PREALLOC);

#[map]
pub static MP_TC_VETH_CFG: Array<u32> = Array::pinned(VETH_CFG_SLOTS, 0);

#[map]
pub static MP_TC_VETH_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(VETH_REASON_COUNT, 0);

#[inline(always)]
pub fn bump(reason: VethReason) {
    if let Some(p) = MP_TC_VETH_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot is only written by this CPU and programs do not preempt each
        // other on one CPU.
        unsafe { *p += 1 };
    }
}

#[classifier]
pub fn mp_tc_veth_in(ctx: TcContext) -> i32 {
    match from_pod(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[classifier]
pub fn mp_tc_veth_eg(ctx: TcContext) -> i32 {
    match to_pod(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn from_pod(ctx: &TcContext) -> Result<i32, i32> {
    let Some(p) = parsed(ctx) else {
        return Ok(TC_ACT_OK);
    };
    let daddr_be = if reverse(ctx, &p)? {
        p.daddr_be
    } else {
        translate(ctx, &p)?
    };
    if MP_TC_VETH_CFG.get(VETH_CFG_FORWARD).copied().unwrap_or(0) == 0 {
        return Ok(TC_ACT_OK);
    }
    Ok(forward::forward(ctx, daddr_be, &p))
}

#[inline(always)]
fn to_pod(ctx: &TcContext) -> Result<i32, i32> {
    let Some(p) = parsed(ctx) else {
        return Ok(TC_ACT_OK);
    };
    reverse(ctx, &p)?;
    Ok(TC_ACT_OK)
}

#[inline(always)]
fn parsed(ctx: &TcContext) -> Option<Packet> {
    match nat::parse(ctx) {
        Ok(p) => p,
        Err(reason) => {
            bump(match reason {
                TcReason::Fragment => VethReason::Fragment,
                _ => VethReason::Truncated,
            });
            None
        }
    }
}

/// A backend's reply of a tracked flow: the ClusterIP back as its source. `Ok(true)`: it was one.
#[inline(always)]
fn reverse(ctx: &TcContext, p: &Packet) -> Result<bool, i32> {
    let key = p.ct_key(CT_DIR_VETH_REPLY);
    let Some(entry) = MP_TC_CT.get_ptr_mut(&key) else {
        return Ok(false);
    };
    // SAFETY: a value pointer from a successful lookup, valid for this program run.
    let ct = unsafe { *entry };
    // The sender's key: the pod this reply goes to, towards the ClusterIP it sent to.
    let original = CtKey {
        saddr_be: p.daddr_be,
        daddr_be: ct.addr_be,
        sport_be: p.dport_be,
        dport_be: ct.port_be,
        proto: p.proto,
        dir: CT_DIR_VETH_ORIGINAL,
        _pad: 0,
    };
    closing(entry, &ct, p, &original);
    rewrite(ctx, p, End::Source, ct.addr_be, ct.port_be)?;
    bump(VethReason::ReplyReversed);
    Ok(true)
}

/// A packet to a ClusterIP: its flow's backend, or a new one. Returns the destination the
/// packet now has.
#[inline(always)]
fn translate(ctx: &TcContext, p: &Packet) -> Result<u32, i32> {
    let key = p.ct_key(CT_DIR_VETH_ORIGINAL);
    if let Some(entry) = MP_TC_CT.get_ptr_mut(&key) {
        // SAFETY: as in `reverse`.
        let ct = unsafe { *entry };
        closing(entry, &ct, p, &key);
        rewrite(ctx, p, End::Destination, ct.addr_be, ct.port_be)?;
        bump(VethReason::FlowTranslated);
        return Ok(ct.addr_be);
    }
    let Some((frontend, svc)) = lb::lookup_frontend(p.daddr_be, p.dport_be, p.proto) else {
        return Ok(p.daddr_be);
    };
    if svc.flags & SVC_FLAG_STEERED != 0 {
        bump(VethReason::Steered);
        return Ok(p.daddr_be);
    }
    let (slot, backend) = pick(ctx, p, &frontend, &svc)?;
    // TCP flows only, as the socket path and the uplink count connects (UDP has no close), and
    // only from their SYN. A later segment with no entry is a flow the LRU evicted: it keeps
    // the slot its record still holds (no second one; its close gives that back), else it goes
    // on uncounted (an uncounted flow, or one the sweep already released).
    let mut flags = 0;
    let counted = if p.proto != PROTO_TCP {
        false
    } else if !p.opening {
        if limit::holds(&key) {
            flags = CT_FLAG_COUNTED;
        }
        false
    } else {
        match limit::admit(svc.svc_id) {
            Admission::Refused => return Err(refused(ctx, p, VethReason::ConnLimitRefused)),
            Admission::Admitted => true,
            Admission::Unlimited => false,
        }
    };
    let held = Slot {
        svc_id: svc.svc_id,
        counted,
    };
    flags |= held.flags();
    if svc.flags & SVC_FLAG_AFFINITY != 0
        && !affinity::remember_backend(&frontend, p.saddr_be, slot, backend.ip_be, backend.port_be)
    {
        bump(VethReason::AffinityUpdateFailed);
    }
    // The reply entry first: the answer may come back on another CPU before this returns.
    let reply = CtKey {
        saddr_be: backend.ip_be,
        daddr_be: p.saddr_be,
        sport_be: backend.port_be,
        dport_be: p.sport_be,
        proto: p.proto,
        dir: CT_DIR_VETH_REPLY,
        _pad: 0,
    };
    let to_frontend = ct_value(p.daddr_be, p.dport_be, svc.svc_id, flags);
    let to_backend = ct_value(backend.ip_be, backend.port_be, svc.svc_id, flags);
    if MP_TC_CT.insert(&reply, &to_frontend, 0).is_err() {
        held.undo();
        return Err(shot(VethReason::CtUpdateFailed));
    }
    if MP_TC_CT.insert(&key, &to_backend, 0).is_err() {
        let _ = MP_TC_CT.remove(&reply);
        held.undo();
        return Err(shot(VethReason::CtUpdateFailed));
    }
    held.track(&key);
    rewrite(ctx, p, End::Destination, backend.ip_be, backend.port_be)?;
    bump(VethReason::NewFlow);
    Ok(backend.ip_be)
}

/// A new flow's slot and backend: the sender's `sessionAffinity: ClientIP` backend while it
/// holds (the uplink's table and logic), else a slot at random. `Err`: the verdict (no
/// endpoint: refused; a slot missing: dropped).
#[inline(always)]
fn pick(
    ctx: &TcContext,
    p: &Packet,
    frontend: &ServiceKey,
    svc: &ServiceValue,
) -> Result<(u16, Backend), i32> {
    let count = svc.count as u32;
    if count == 0 {
        return Err(refused(ctx, p, VethReason::NoBackend));
    }
    if svc.flags & SVC_FLAG_AFFINITY != 0 {
        if let Some(found) = remembered(frontend, svc, p.saddr_be) {
            bump(VethReason::AffinityHit);
            return Ok(found);
        }
    }
    // SAFETY: no preconditions.
    let slot = (unsafe { bpf_get_prandom_u32() } % count) as u16 + 1;
    // SAFETY: the value is copied out at once.
    let Some(slot_val) = (unsafe { MP_SERVICES.get(&frontend.with_slot(slot)) }).copied() else {
        return Err(shot(VethReason::SlotMissing));
    };
    if slot_val.backend_id == NO_ENDPOINT_BACKEND_ID || slot_val.backend.ip_be == 0 {
        return Err(refused(ctx, p, VethReason::NoBackend));
    }
    Ok((slot, slot_val.backend))
}

/// The sender's affinity backend, if it is fresh and its slot still holds that backend.
#[inline(always)]
fn remembered(frontend: &ServiceKey, svc: &ServiceValue, client_be: u32) -> Option<(u16, Backend)> {
    let a = affinity::recall(frontend, svc.affinity_timeout_sec, client_be)?;
    // SAFETY: the value is copied out at once.
    let v = unsafe { MP_SERVICES.get(&frontend.with_slot(a.slot)) }.copied()?;
    if v.backend_id == NO_ENDPOINT_BACKEND_ID
        || v.backend.ip_be != a.backend_ip_be
        || v.backend.port_be != a.backend_port_be
    {
        return None;
    }
    Some((a.slot, v.backend))
}

/// A ClusterIP the packet cannot have (`why`: no endpoint, or over `maxConnections`): answered
/// as the uplink answers (a RST, an ICMP port unreachable), sent back into the pod, so its
/// connect fails at once instead of retrying into a drop. A RST itself gets no answer.
#[inline(always)]
fn refused(ctx: &TcContext, p: &Packet, why: VethReason) -> i32 {
    bump(why);
    if p.reset {
        return TC_ACT_SHOT;
    }
    match refuse::refuse(ctx, p) {
        Ok(verdict) => {
            bump(if p.proto == PROTO_TCP {
                VethReason::ResetSent
            } else {
                VethReason::UnreachableSent
            });
            verdict
        }
        Err(_) => shot(VethReason::RefusalFailed),
    }
}

/// Marks the entry seen now (the userspace sweep's idle clock) and closing on a FIN or RST; a
/// counted flow's first one (either direction) gives its connection slot back. `original` is the
/// flow's sender-side key, its record's key.
#[inline(always)]
fn closing(entry: *mut CtValue, ct: &CtValue, p: &Packet, original: &CtKey) {
    // SAFETY: a value pointer from a successful lookup, valid for this program run; an 8-byte
    // store another CPU can only race with a similar timestamp.
    unsafe { (*entry).last_seen_ns = bpf_ktime_get_ns() };
    if p.closing && ct.state != CT_STATE_CLOSING {
        // SAFETY: a live value pointer; a 1-byte store another CPU can only race with the same
        // value.
        unsafe { (*entry).state = CT_STATE_CLOSING };
        bump(VethReason::FlowClosing);
        if ct.flags & CT_FLAG_COUNTED != 0 && limit::release(original) {
            bump(VethReason::ConnReleased);
        }
    }
}

#[inline(always)]
fn rewrite(ctx: &TcContext, p: &Packet, end: End, ip_be: u32, port_be: u16) -> Result<(), i32> {
    nat::rewrite(ctx, p, end, ip_be, port_be).map_err(|_| shot(VethReason::RewriteFailed))
}

#[inline(always)]
fn ct_value(addr_be: u32, port_be: u16, svc_id: u32, flags: u8) -> CtValue {
    CtValue {
        addr_be,
        port_be,
        state: CT_STATE_OPEN,
        flags,
        svc_id,
        nat_addr_be: 0,
        nat_port_be: 0,
        _pad: 0,
        _pad1: 0,
        // SAFETY: no preconditions.
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
    }
}

#[inline(always)]
fn shot(reason: VethReason) -> i32 {
    bump(reason);
    TC_ACT_SHOT
}
