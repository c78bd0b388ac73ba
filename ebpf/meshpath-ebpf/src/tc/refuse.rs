//! Refusing a packet the way a host without a listener does, so a client fails at once instead
//! of retrying into a drop: a TCP segment is turned into a RST, a UDP datagram into an ICMP
//! port unreachable, in place, and sent back out of the interface it came in on (MAC addresses
//! swapped: the sender, or the router it came through, is the next hop back).

use aya_ebpf::{
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use meshpath_common::{tc::TcReason, PROTO_TCP};

use super::nat::{Packet, ETH_HLEN};

const IP_HLEN: usize = 20;
const TCP_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
const PROTO_ICMP: u8 = 1;
/// `bpf_skb_adjust_room` mode: open room right after the Ethernet header.
const BPF_ADJ_ROOM_MAC: u32 = 1;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Answers `p` with a RST (TCP) or an ICMP port unreachable (UDP). `Ok` carries the verdict.
#[inline(always)]
pub fn refuse(ctx: &TcContext, p: &Packet) -> Result<i32, TcReason> {
    if p.l4_off != ETH_HLEN + IP_HLEN {
        // IP options: not worth a variable-length rebuild; the packet is dropped, counted.
        return Err(TcReason::RefusalFailed);
    }
    let reason = if p.proto == PROTO_TCP {
        reset(ctx, p)?;
        TcReason::ResetSent
    } else {
        unreachable(ctx, p)?;
        TcReason::UnreachableSent
    };
    super::maps::bump(reason);
    // SAFETY: the context's skb pointer is valid for this program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: no preconditions; egress of the interface the packet arrived on.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

fn failed<E>(_: E) -> TcReason {
    TcReason::RefusalFailed
}

/// Ethernet addresses swapped: the answer goes back to whoever handed us the packet.
#[inline(always)]
fn swap_macs(ctx: &TcContext) -> Result<(), TcReason> {
    let macs: [u8; 12] = ctx.load(0).map_err(failed)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &swapped, 0).map_err(failed)
}

/// A fresh IPv4 header from `p`'s destination back to its source.
#[inline(always)]
fn ip_header(p: &Packet, proto: u8, total: u16) -> [u8; IP_HLEN] {
    let mut h = [0u8; IP_HLEN];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6] = 0x40; // don't fragment
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&p.daddr_be.to_ne_bytes());
    h[16..20].copy_from_slice(&p.saddr_be.to_ne_bytes());
    let c = fold(sum(&h, 0));
    h[10..12].copy_from_slice(&c.to_ne_bytes());
    h
}

fn reset(ctx: &TcContext, p: &Packet) -> Result<(), TcReason> {
    let l4 = p.l4_off;
    let flags: u8 = ctx.load(l4 + 13).map_err(failed)?;
    if flags & TCP_RST != 0 {
        // Never answer a RST with a RST.
        return Err(TcReason::RefusalFailed);
    }
    let seq = u32::from_be(ctx.load::<u32>(l4 + 4).map_err(failed)?);
    let ack = u32::from_be(ctx.load::<u32>(l4 + 8).map_err(failed)?);
    let ip_total = u16::from_be(ctx.load::<u16>(ETH_HLEN + 2).map_err(failed)?) as u32;
    let doff = ((ctx.load::<u8>(l4 + 12).map_err(failed)? >> 4) as u32) * 4;
    let payload = ip_total.saturating_sub(IP_HLEN as u32 + doff);
    // RFC 9293 §3.10.7.1: with an ACK, the RST takes its sequence number from it; without,
    // it acknowledges everything the segment occupied.
    let (rst_seq, rst_ack, rst_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let occupied =
            payload + (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
        (0, seq.wrapping_add(occupied), TCP_RST | TCP_ACK)
    };
    let mut t = [0u8; TCP_HLEN];
    t[0..2].copy_from_slice(&p.dport_be.to_ne_bytes());
    t[2..4].copy_from_slice(&p.sport_be.to_ne_bytes());
    t[4..8].copy_from_slice(&rst_seq.to_be_bytes());
    t[8..12].copy_from_slice(&rst_ack.to_be_bytes());
    t[12] = (TCP_HLEN as u8 / 4) << 4;
    t[13] = rst_flags;
    // The pseudo-header: addresses, protocol, TCP length.
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&p.daddr_be.to_ne_bytes());
    pseudo[4..8].copy_from_slice(&p.saddr_be.to_ne_bytes());
    pseudo[9] = PROTO_TCP;
    pseudo[10..12].copy_from_slice(&(TCP_HLEN as u16).to_be_bytes());
    let c = fold(sum(&t, sum(&pseudo, 0)));
    t[16..18].copy_from_slice(&c.to_ne_bytes());
    let ip = ip_header(p, PROTO_TCP, (IP_HLEN + TCP_HLEN) as u16);
    resize(ctx, ETH_HLEN + IP_HLEN + TCP_HLEN)?;
    swap_macs(ctx)?;
    ctx.store(ETH_HLEN, &ip, 0).map_err(failed)?;
    ctx.store(ETH_HLEN + IP_HLEN, &t, 0).map_err(failed)
}

/// ICMP destination unreachable, port unreachable (RFC 792), quoting the datagram's IP header
/// and first 8 bytes: 28 bytes of room are opened after the Ethernet header for the new IP and
/// ICMP headers, and the rest cut.
fn unreachable(ctx: &TcContext, p: &Packet) -> Result<(), TcReason> {
    let quoted: [u8; IP_HLEN + 8] = ctx.load(ETH_HLEN).map_err(failed)?;
    ctx.adjust_room((IP_HLEN + ICMP_HLEN) as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(failed)?;
    let total = IP_HLEN + ICMP_HLEN + quoted.len();
    resize(ctx, ETH_HLEN + total)?;
    let mut icmp = [0u8; ICMP_HLEN];
    icmp[0] = 3; // destination unreachable
    icmp[1] = 3; // port unreachable
    let c = fold(sum(&icmp, sum(&quoted, 0)));
    icmp[2..4].copy_from_slice(&c.to_ne_bytes());
    let ip = ip_header(p, PROTO_ICMP, total as u16);
    swap_macs(ctx)?;
    ctx.store(ETH_HLEN, &ip, 0).map_err(failed)?;
    ctx.store(ETH_HLEN + IP_HLEN, &icmp, 0).map_err(failed)
}

#[inline(always)]
fn resize(ctx: &TcContext, len: usize) -> Result<(), TcReason> {
    // SAFETY: the context's skb pointer is valid for this program run.
    let rc = unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, len as u32, 0) };
    if rc != 0 {
        return Err(TcReason::RefusalFailed);
    }
    Ok(())
}

/// One's-complement sum of `bytes` (even length) as the wire's 16-bit words. Summing the words
/// in host order and storing the folded result in host order gives the right bytes on the wire
/// (the one's-complement sum commutes with byte swapping).
#[inline(always)]
fn sum(bytes: &[u8], mut acc: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        acc += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    acc
}

#[inline(always)]
fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}
