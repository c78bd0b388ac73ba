//! The two directions of a translated flow. Ingress (client → frontend): a tracked flow keeps
//! its backend; a new one picks a slot at random and writes both conntrack entries before its
//! first packet is rewritten. Egress (backend → client): a reply of a tracked flow gets the
//! frontend's address back as its source, so the client sees the address it sent to.

use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::TcContext};
use meshpath_common::{
    tc::{
        CtKey, CtValue, TcReason, TcSlot, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_STATE_CLOSING,
        CT_STATE_OPEN, TC_ANY_NODE_IP,
    },
    ServiceKey,
};

use super::maps::{bump, MP_TC_CT, MP_TC_NODE_IPS, MP_TC_SVC};
use super::nat::{self, End, Packet};
use super::{TC_ACT_OK, TC_ACT_SHOT};

#[inline(always)]
pub fn ingress(ctx: &TcContext) -> Result<i32, i32> {
    let p = match nat::parse(ctx) {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(TC_ACT_OK),
        // Not ours to judge (a fragment, a runt): the stack decides, the counter says so.
        Err(reason) => {
            bump(reason);
            return Ok(TC_ACT_OK);
        }
    };
    let key = ct_key(&p, CT_DIR_ORIGINAL);
    if let Some(entry) = MP_TC_CT.get_ptr_mut(&key) {
        // SAFETY: a value pointer from a successful lookup, valid for this program run.
        let ct = unsafe { *entry };
        if p.closing && ct.state != CT_STATE_CLOSING {
            // SAFETY: as above; a 1-byte store another CPU can only race with the same value.
            unsafe { (*entry).state = CT_STATE_CLOSING };
            bump(TcReason::FlowClosing);
        }
        return match nat::rewrite(ctx, &p, End::Destination, ct.addr_be, ct.port_be) {
            Ok(()) => {
                bump(TcReason::FlowTranslated);
                Ok(TC_ACT_OK)
            }
            Err(reason) => shot(reason),
        };
    }
    let Some((frontend, header)) = frontend(&p) else {
        return Ok(TC_ACT_OK);
    };
    let count = header.count as u32;
    if count == 0 {
        return shot(TcReason::NoBackend);
    }
    // SAFETY: no preconditions.
    let slot = (unsafe { bpf_get_prandom_u32() } % count) as u16 + 1;
    // SAFETY: the value is copied out at once.
    let Some(backend) = (unsafe { MP_TC_SVC.get(&frontend.with_slot(slot)) }).copied() else {
        return shot(TcReason::SlotMissing);
    };
    // The reply entry first: once the client's packet is on its way, the answer may come back
    // on another CPU before this program returns.
    let reply = CtKey {
        saddr_be: backend.backend_ip_be,
        daddr_be: p.saddr_be,
        sport_be: backend.backend_port_be,
        dport_be: p.sport_be,
        proto: p.proto,
        dir: CT_DIR_REPLY,
        _pad: 0,
    };
    let to_frontend = ct_value(p.daddr_be, p.dport_be, header.svc_id);
    let to_backend = ct_value(
        backend.backend_ip_be,
        backend.backend_port_be,
        header.svc_id,
    );
    if MP_TC_CT.insert(&reply, &to_frontend, 0).is_err()
        || MP_TC_CT.insert(&key, &to_backend, 0).is_err()
    {
        return shot(TcReason::CtUpdateFailed);
    }
    match nat::rewrite(
        ctx,
        &p,
        End::Destination,
        backend.backend_ip_be,
        backend.backend_port_be,
    ) {
        Ok(()) => {
            bump(TcReason::NewFlow);
            Ok(TC_ACT_OK)
        }
        Err(reason) => shot(reason),
    }
}

#[inline(always)]
pub fn egress(ctx: &TcContext) -> Result<i32, i32> {
    let p = match nat::parse(ctx) {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(TC_ACT_OK),
        Err(reason) => {
            bump(reason);
            return Ok(TC_ACT_OK);
        }
    };
    let key = ct_key(&p, CT_DIR_REPLY);
    let Some(entry) = MP_TC_CT.get_ptr_mut(&key) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: a value pointer from a successful lookup, valid for this program run.
    let ct = unsafe { *entry };
    if p.closing && ct.state != CT_STATE_CLOSING {
        // SAFETY: as above.
        unsafe { (*entry).state = CT_STATE_CLOSING };
        bump(TcReason::FlowClosing);
    }
    match nat::rewrite(ctx, &p, End::Source, ct.addr_be, ct.port_be) {
        Ok(()) => {
            bump(TcReason::ReplyReversed);
            Ok(TC_ACT_OK)
        }
        Err(reason) => shot(reason),
    }
}

/// The frontend a client's packet is addressed to: an external or load-balancer IP exactly, else
/// a NodePort when the destination is one of the node's own addresses.
#[inline(always)]
fn frontend(p: &Packet) -> Option<(ServiceKey, TcSlot)> {
    let exact = ServiceKey::new(p.daddr_be, p.dport_be, p.proto, 0);
    // SAFETY: values are copied out at once.
    if let Some(h) = unsafe { MP_TC_SVC.get(&exact) } {
        return Some((exact, *h));
    }
    // SAFETY: presence check only.
    unsafe { MP_TC_NODE_IPS.get(&p.daddr_be) }?;
    let node_port = ServiceKey::new(TC_ANY_NODE_IP, p.dport_be, p.proto, 0);
    // SAFETY: as above.
    let h = unsafe { MP_TC_SVC.get(&node_port) }?;
    Some((node_port, *h))
}

#[inline(always)]
fn ct_key(p: &Packet, dir: u8) -> CtKey {
    CtKey {
        saddr_be: p.saddr_be,
        daddr_be: p.daddr_be,
        sport_be: p.sport_be,
        dport_be: p.dport_be,
        proto: p.proto,
        dir,
        _pad: 0,
    }
}

#[inline(always)]
fn ct_value(addr_be: u32, port_be: u16, svc_id: u32) -> CtValue {
    CtValue {
        addr_be,
        port_be,
        state: CT_STATE_OPEN,
        _pad: 0,
        svc_id,
        _pad1: 0,
    }
}

#[inline(always)]
fn shot(reason: TcReason) -> Result<i32, i32> {
    bump(reason);
    Err(TC_ACT_SHOT)
}
