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

/// Answers `p` with a RST (TCP) or an ICMP port unreachable (UDP). `Ok` carries the verdict;
/// what was sent follows from `p.proto`, and the caller counts it (the uplink and the veths
/// count apart). `Err`: nothing could be sent (the packet is to be dropped, counted by the
/// caller). Not inlined: its stack frame is apart from the per-packet path's (the verifier
/// limits the combined depth). Returns a plain `Result<i32, TcReason>`: a tuple in it made
/// BTF the kernel rejects (a union member at a bit offset).
#[inline(never)]
pub fn refuse(ctx: &TcContext, p: &Packet) -> Result<i32, TcReason> {
    if p.l4_off != ETH_HLEN + IP_HLEN {
        // IP options: not worth a variable-length rebuild; the packet is dropped, counted.
        return Err(TcReason::RefusalFailed);
    }
    if p.proto == PROTO_TCP {
        reset(ctx, p)?;
    } else {
        unreachable(ctx, p)?;
    }
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
    let dst: [u8; 6] = ctx.load(0).map_err(failed)?;
    let src: [u8; 6] = ctx.load(6).map_err(failed)?;
    ctx.store(0, &src, 0).map_err(failed)?;
    ctx.store(6, &dst, 0).map_err(failed)
}

/// Four bytes in wire order, as the `u32` whose memory holds them.
#[inline(always)]
fn wire(bytes: [u8; 4]) -> u32 {
    u32::from_ne_bytes(bytes)
}

/// A fresh IPv4 header from `p`'s destination back to its source, as five wire-order words.
#[inline(always)]
fn ip_header(p: &Packet, proto: u8, total: u16) -> [u32; 5] {
    let t = total.to_be_bytes();
    let mut h = [
        wire([0x45, 0, t[0], t[1]]),
        wire([0, 0, 0x40, 0]), // id 0, don't fragment
        wire([64, proto, 0, 0]),
        p.daddr_be,
        p.saddr_be,
    ];
    let c = fold(sum(&h, 0)).to_ne_bytes();
    h[2] = wire([64, proto, c[0], c[1]]);
    h
}

fn reset(ctx: &TcContext, p: &Packet) -> Result<(), TcReason> {
    let l4 = p.l4_off;
    let flags: u8 = ctx.load(l4 + 13).map_err(failed)?;
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
        let occupied = payload + (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
        (0, seq.wrapping_add(occupied), TCP_RST | TCP_ACK)
    };
    let sport = p.dport_be.to_ne_bytes();
    let dport = p.sport_be.to_ne_bytes();
    let mut t = [
        wire([sport[0], sport[1], dport[0], dport[1]]),
        wire(rst_seq.to_be_bytes()),
        wire(rst_ack.to_be_bytes()),
        wire([(TCP_HLEN as u8 / 4) << 4, rst_flags, 0, 0]),
        0,
    ];
    // The pseudo-header: addresses, protocol, TCP length.
    let pseudo = [
        p.daddr_be,
        p.saddr_be,
        wire([0, PROTO_TCP, 0, TCP_HLEN as u8]),
    ];
    let c = fold(sum(&t, sum(&pseudo, 0))).to_ne_bytes();
    t[4] = wire([c[0], c[1], 0, 0]);
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
    let quoted: [u32; 7] = ctx.load(ETH_HLEN).map_err(failed)?;
    ctx.adjust_room((IP_HLEN + ICMP_HLEN) as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(failed)?;
    let total = IP_HLEN + ICMP_HLEN + 28;
    resize(ctx, ETH_HLEN + total)?;
    // Type 3 (destination unreachable), code 3 (port unreachable), checksum, 4 unused bytes.
    let mut icmp = [wire([3, 3, 0, 0]), 0];
    let c = fold(sum(&icmp, sum(&quoted, 0))).to_ne_bytes();
    icmp[0] = wire([3, 3, c[0], c[1]]);
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

/// One's-complement sum of wire-order words, as 16-bit halves. Summing the halves in host order
/// and storing the folded result in host order gives the right bytes on the wire (the
/// one's-complement sum commutes with byte swapping).
#[inline(always)]
fn sum(words: &[u32], mut acc: u32) -> u32 {
    for w in words {
        acc += (w & 0xffff) + (w >> 16);
    }
    acc
}

#[inline(always)]
fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}
