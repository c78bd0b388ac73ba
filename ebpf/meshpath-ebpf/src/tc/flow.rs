//! The two directions of a translated flow. Ingress (client → frontend): a tracked flow keeps
//! its backend; a new one picks a slot at random and writes both conntrack entries before its
//! first packet is rewritten. Egress (backend → client): a reply of a tracked flow gets the
//! frontend's address back as its source, so the client sees the address it sent to.
//!
//! A flow to another node's endpoint is source-NATed (see `snat`) and forwarded straight out;
//! its replies come back in on the uplink, where ingress translates them back to the client.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use meshpath_common::{
    tc::{
        CtKey, CtValue, TcReason, TcSlot, CT_DIR_ORIGINAL, CT_DIR_REPLY, CT_FLAG_COUNTED,
        CT_FLAG_SNAT, CT_STATE_CLOSING, CT_STATE_OPEN, TC_ANY_NODE_IP, TC_FLAG_REMOTE, TC_SNAT_PORT_MIN,
    },
    ServiceKey, PROTO_TCP,
};

use super::limit::{self, Admission, Slot};
use super::maps::{bump, MP_TC_CT, MP_TC_NODE_IPS, MP_TC_SVC};
use super::nat::{self, End, Packet};
use super::{affinity, fib_out, refuse, snat, TC_ACT_OK, TC_ACT_SHOT};

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
    let key = p.ct_key(CT_DIR_ORIGINAL);
    if let Some(entry) = MP_TC_CT.get_ptr_mut(&key) {
        let ct = touch(entry, &p, &key);
        return original(ctx, &p, &ct);
    }
    if let Some(verdict) = snat_reply(ctx, &p) {
        return verdict;
    }
    let Some((frontend, header)) = frontend(&p) else {
        return Ok(TC_ACT_OK);
    };
    if !p.opening {
        // A segment of a flow this node no longer tracks (its backend was removed, or the
        // entry aged out): a new backend would only answer it with a RST, so answer it here
        // (a RST itself gets no answer).
        if p.reset {
            return shot(TcReason::StaleFlow);
        }
        return refused(ctx, &p, TcReason::StaleFlow);
    }
    let count = header.count as u32;
    if count == 0 {
        return refused(ctx, &p, TcReason::NoBackend);
    }
    // TCP flows only, as the socket path counts connects (UDP has no close to release at).
    let counted = if p.proto == PROTO_TCP {
        match limit::admit(header.svc_id) {
            Admission::Refused => return refused(ctx, &p, TcReason::ConnLimitRefused),
            Admission::Admitted => true,
            Admission::Unlimited => false,
        }
    } else {
        false
    };
    let held = Slot {
        svc_id: header.svc_id,
        counted,
    };
    let sticky = header.affinity_sec != 0;
    let (slot, backend) = match sticky
        .then(|| affinity::lookup(&frontend, &header, p.saddr_be))
        .flatten()
    {
        Some(found) => found,
        None => {
            // SAFETY: no preconditions.
            let slot = (unsafe { bpf_get_prandom_u32() } % count) as u16 + 1;
            // SAFETY: the value is copied out at once.
            match (unsafe { MP_TC_SVC.get(&frontend.with_slot(slot)) }).copied() {
                Some(backend) => (slot, backend),
                None => {
                    held.undo();
                    return shot(TcReason::SlotMissing);
                }
            }
        }
    };
    if sticky {
        affinity::remember(&frontend, p.saddr_be, slot, &backend);
    }
    if backend.flags & TC_FLAG_REMOTE != 0 {
        return new_snat_flow(ctx, &p, &key, &frontend, &backend, held);
    }
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
    let mut to_frontend = ct_value(p.daddr_be, p.dport_be, header.svc_id);
    to_frontend.flags = held.flags();
    let mut to_backend = ct_value(
        backend.backend_ip_be,
        backend.backend_port_be,
        header.svc_id,
    );
    to_backend.flags = held.flags();
    if MP_TC_CT.insert(&reply, &to_frontend, 0).is_err() {
        held.undo();
        return shot(TcReason::CtUpdateFailed);
    }
    if MP_TC_CT.insert(&key, &to_backend, 0).is_err() {
        let _ = MP_TC_CT.remove(&reply);
        held.undo();
        return shot(TcReason::CtUpdateFailed);
    }
    held.track(&key);
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
    let key = p.ct_key(CT_DIR_REPLY);
    let Some(entry) = MP_TC_CT.get_ptr_mut(&key) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: a value pointer from a successful lookup, valid for this program run.
    let front = unsafe { ((*entry).addr_be, (*entry).port_be) };
    // The client's own tuple: this reply goes to it unchanged (no SNAT on this side).
    let original_key = original_of(&p, p.daddr_be, p.dport_be, front);
    let ct = touch(entry, &p, &original_key);
    match nat::rewrite(ctx, &p, End::Source, ct.addr_be, ct.port_be) {
        Ok(()) => {
            bump(TcReason::ReplyReversed);
            Ok(TC_ACT_OK)
        }
        Err(reason) => shot(reason),
    }
}

/// A client's packet of a tracked flow: to its backend, source-NATed when that is remote.
#[inline(always)]
fn original(ctx: &TcContext, p: &Packet, ct: &CtValue) -> Result<i32, i32> {
    if ct.flags & CT_FLAG_SNAT != 0 {
        return snat_forward(ctx, p, ct);
    }
    match nat::rewrite(ctx, p, End::Destination, ct.addr_be, ct.port_be) {
        Ok(()) => {
            bump(TcReason::FlowTranslated);
            Ok(TC_ACT_OK)
        }
        Err(reason) => shot(reason),
    }
}

/// Rewrites both ends of a client's packet (node address and SNAT port as the source, the
/// backend as the destination) and sends it towards the backend's node.
#[inline(always)]
fn snat_forward(ctx: &TcContext, p: &Packet, ct: &CtValue) -> Result<i32, i32> {
    let translated = nat::rewrite(ctx, p, End::Source, ct.nat_addr_be, ct.nat_port_be)
        .and_then(|()| nat::rewrite(ctx, p, End::Destination, ct.addr_be, ct.port_be));
    if let Err(reason) = translated {
        return shot(reason);
    }
    match fib_out::to_fib_nexthop(ctx, ct.nat_addr_be, ct.addr_be) {
        Ok(verdict) => {
            bump(TcReason::SnatForwarded);
            Ok(verdict)
        }
        Err(reason) => shot(reason),
    }
}

/// A remote backend's reply to a source-NATed flow, arriving on the uplink: frontend address
/// back as the source, the client as the destination, and out again. `None`: not one.
#[inline(always)]
fn snat_reply(ctx: &TcContext, p: &Packet) -> Option<Result<i32, i32>> {
    if u16::from_be(p.dport_be) < TC_SNAT_PORT_MIN {
        return None;
    }
    // SAFETY: presence check only.
    unsafe { MP_TC_NODE_IPS.get(&p.daddr_be) }?;
    let entry = MP_TC_CT.get_ptr_mut(&p.ct_key(CT_DIR_REPLY))?;
    // SAFETY: a value pointer from a successful lookup, valid for this program run.
    let v = unsafe { *entry };
    // Not a source-NATed flow's: left to the other paths, untouched.
    if v.flags & CT_FLAG_SNAT == 0 {
        return None;
    }
    // The client is what the SNAT wrote over: the entry's `nat_*`.
    let original_key = original_of(p, v.nat_addr_be, v.nat_port_be, (v.addr_be, v.port_be));
    let ct = touch(entry, p, &original_key);
    let translated = nat::rewrite(ctx, p, End::Source, ct.addr_be, ct.port_be)
        .and_then(|()| nat::rewrite(ctx, p, End::Destination, ct.nat_addr_be, ct.nat_port_be));
    if let Err(reason) = translated {
        return Some(shot(reason));
    }
    Some(
        match fib_out::to_fib_nexthop(ctx, ct.addr_be, ct.nat_addr_be) {
            Ok(verdict) => {
                bump(TcReason::SnatReplyReversed);
                Ok(verdict)
            }
            Err(reason) => shot(reason),
        },
    )
}

/// A client's first packet to a remote backend: claims a SNAT port (the reply entry), then the
/// original entry, then forwards.
#[inline(always)]
fn new_snat_flow(
    ctx: &TcContext,
    p: &Packet,
    key: &CtKey,
    frontend: &ServiceKey,
    backend: &TcSlot,
    held: Slot,
) -> Result<i32, i32> {
    // A NodePort answers as the address the client used; an external IP is not the node's, so
    // the flow takes the node's primary address (written by the agent under TC_ANY_NODE_IP).
    let snat_addr = if frontend.vip_be == TC_ANY_NODE_IP {
        p.daddr_be
    } else {
        // SAFETY: the value is copied out at once.
        match unsafe { MP_TC_NODE_IPS.get(&TC_ANY_NODE_IP) } {
            Some(ip) => *ip,
            None => {
                held.undo();
                return shot(TcReason::FibFailed);
            }
        }
    };
    let mut reply = CtKey {
        saddr_be: backend.backend_ip_be,
        daddr_be: snat_addr,
        sport_be: backend.backend_port_be,
        dport_be: 0,
        proto: p.proto,
        dir: CT_DIR_REPLY,
        _pad: 0,
    };
    let mut to_client = ct_value(p.daddr_be, p.dport_be, backend.svc_id);
    to_client.flags = CT_FLAG_SNAT | held.flags();
    to_client.nat_addr_be = p.saddr_be;
    to_client.nat_port_be = p.sport_be;
    let nat_port_be = match snat::claim_port(&mut reply, &to_client) {
        Ok(port) => port,
        Err(reason) => {
            held.undo();
            return shot(reason);
        }
    };
    let mut to_backend = ct_value(
        backend.backend_ip_be,
        backend.backend_port_be,
        backend.svc_id,
    );
    to_backend.flags = CT_FLAG_SNAT | held.flags();
    to_backend.nat_addr_be = snat_addr;
    to_backend.nat_port_be = nat_port_be;
    if MP_TC_CT.insert(key, &to_backend, 0).is_err() {
        let _ = MP_TC_CT.remove(&reply);
        held.undo();
        return shot(TcReason::CtUpdateFailed);
    }
    held.track(key);
    bump(TcReason::NewFlow);
    snat_forward(ctx, p, &to_backend)
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

/// Marks the entry seen now (the GC's idle clock) and closing on a FIN or RST; returns a copy.
/// A counted flow's first FIN or RST (either direction) gives its connection slot back;
/// `original` is the flow's client-side key, which its record is filed under.
#[inline(always)]
fn touch(entry: *mut CtValue, p: &Packet, original: &CtKey) -> CtValue {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a value pointer from a successful lookup, valid for this program run; an 8-byte
    // store another CPU can only race with a similar timestamp.
    let ct = unsafe {
        (*entry).last_seen_ns = now;
        *entry
    };
    if p.closing && ct.state != CT_STATE_CLOSING {
        // SAFETY: as above; a 1-byte store another CPU can only race with the same value.
        unsafe { (*entry).state = CT_STATE_CLOSING };
        bump(TcReason::FlowClosing);
        if ct.flags & CT_FLAG_COUNTED != 0 && limit::release(original) {
            bump(TcReason::ConnReleased);
        }
    }
    ct
}

/// The original-direction key of the flow a reply belongs to: the client (`client_be`,
/// `client_port_be`) towards the frontend it sent to (`front`, from the reply entry).
#[inline(always)]
fn original_of(p: &Packet, client_be: u32, client_port_be: u16, front: (u32, u16)) -> CtKey {
    CtKey {
        saddr_be: client_be,
        daddr_be: front.0,
        sport_be: client_port_be,
        dport_be: front.1,
        proto: p.proto,
        dir: CT_DIR_ORIGINAL,
        _pad: 0,
    }
}

/// Counts why the packet is refused, then answers it (RST or ICMP), or drops it counted.
#[inline(always)]
fn refused(ctx: &TcContext, p: &Packet, why: TcReason) -> Result<i32, i32> {
    bump(why);
    match refuse::refuse(ctx, p) {
        Ok(verdict) => {
            bump(if p.proto == PROTO_TCP {
                TcReason::ResetSent
            } else {
                TcReason::UnreachableSent
            });
            Ok(verdict)
        }
        Err(reason) => shot(reason),
    }
}

#[inline(always)]
fn ct_value(addr_be: u32, port_be: u16, svc_id: u32) -> CtValue {
    CtValue {
        addr_be,
        port_be,
        state: CT_STATE_OPEN,
        flags: 0,
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
fn shot(reason: TcReason) -> Result<i32, i32> {
    bump(reason);
    Err(TC_ACT_SHOT)
}
