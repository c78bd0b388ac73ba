//! Reading the headers a flow is keyed by and rewriting one end of it, with the IP and L4
//! checksums fixed incrementally. Offsets are read through `bpf_skb_load_bytes` rather than
//! direct packet access: the IP header length varies, and the helper checks bounds for us.

use aya_ebpf::programs::TcContext;
use meshpath_common::{
    tc::{CtKey, TcReason},
    PROTO_TCP, PROTO_UDP,
};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;
const TCP_CSUM: usize = 16;
const TCP_FLAGS: usize = 13;
const UDP_CSUM: usize = 6;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// Non-zero fragment offset: a later fragment, which carries no L4 header.
const IP_FRAG_OFFSET_MASK: u16 = 0x1fff;

const BPF_F_PSEUDO_HDR: u64 = 16;
/// UDP only: a zero checksum means "none" and must stay zero (and a computed zero becomes 0xffff).
const BPF_F_MARK_MANGLED_0: u64 = 32;

/// An IPv4 TCP or UDP packet's 5-tuple, all in network order.
#[derive(Clone, Copy)]
pub struct Packet {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    /// TCP FIN or RST set.
    pub closing: bool,
    /// TCP RST set.
    pub reset: bool,
    /// TCP SYN without ACK: the only segment that may start a flow (UDP: always true).
    pub opening: bool,
    pub l4_off: usize,
}

impl Packet {
    /// The conntrack key of this packet's 5-tuple in direction `dir` (both tc paths share the
    /// table; `dir` tells their entries apart).
    #[inline(always)]
    pub fn ct_key(&self, dir: u8) -> CtKey {
        CtKey {
            saddr_be: self.saddr_be,
            daddr_be: self.daddr_be,
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto,
            dir,
            _pad: 0,
        }
    }
}

/// `Ok(None)`: not an IPv4 TCP/UDP packet we can key (left alone, not counted: most traffic).
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Option<Packet>, TcReason> {
    let eth_proto = u16::from_be(ctx.load::<u16>(12).map_err(|_| TcReason::Truncated)?);
    if eth_proto != ETH_P_IP {
        return Ok(None);
    }
    let vihl: u8 = ctx.load(ETH_HLEN).map_err(|_| TcReason::Truncated)?;
    let proto: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| TcReason::Truncated)?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(None);
    }
    let frag = u16::from_be(
        ctx.load::<u16>(ETH_HLEN + 6)
            .map_err(|_| TcReason::Truncated)?,
    );
    if frag & IP_FRAG_OFFSET_MASK != 0 {
        return Err(TcReason::Fragment);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(TcReason::Truncated);
    }
    let l4_off = ETH_HLEN + ihl;
    let saddr_be: u32 = ctx.load(IP_SRC_OFF).map_err(|_| TcReason::Truncated)?;
    let daddr_be: u32 = ctx.load(IP_DST_OFF).map_err(|_| TcReason::Truncated)?;
    let sport_be: u16 = ctx.load(l4_off).map_err(|_| TcReason::Truncated)?;
    let dport_be: u16 = ctx.load(l4_off + 2).map_err(|_| TcReason::Truncated)?;
    let (closing, reset, opening) = if proto == PROTO_TCP {
        let flags: u8 = ctx
            .load(l4_off + TCP_FLAGS)
            .map_err(|_| TcReason::Truncated)?;
        (
            flags & (TCP_FIN | TCP_RST) != 0,
            flags & TCP_RST != 0,
            flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN,
        )
    } else {
        (false, false, true)
    };
    Ok(Some(Packet {
        saddr_be,
        daddr_be,
        sport_be,
        dport_be,
        proto,
        closing,
        reset,
        opening,
        l4_off,
    }))
}

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Writes `ip_be:port_be` over the packet's source or destination, fixing both checksums.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    p: &Packet,
    end: End,
    ip_be: u32,
    port_be: u16,
) -> Result<(), TcReason> {
    let (ip_off, port_off, old_ip, old_port) = match end {
        End::Source => (IP_SRC_OFF, p.l4_off, p.saddr_be, p.sport_be),
        End::Destination => (IP_DST_OFF, p.l4_off + 2, p.daddr_be, p.dport_be),
    };
    let (csum_off, mangled) = if p.proto == PROTO_TCP {
        (p.l4_off + TCP_CSUM, 0)
    } else {
        (p.l4_off + UDP_CSUM, BPF_F_MARK_MANGLED_0)
    };
    let failed = |_| TcReason::RewriteFailed;
    // The address is part of the L4 pseudo-header, so both checksums change with it.
    ctx.l4_csum_replace(
        csum_off,
        old_ip as u64,
        ip_be as u64,
        BPF_F_PSEUDO_HDR | mangled | 4,
    )
    .map_err(failed)?;
    ctx.l4_csum_replace(csum_off, old_port as u64, port_be as u64, mangled | 2)
        .map_err(failed)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, old_ip as u64, ip_be as u64, 4)
        .map_err(failed)?;
    ctx.store(ip_off, &ip_be, 0).map_err(failed)?;
    ctx.store(port_off, &port_be, 0).map_err(failed)?;
    Ok(())
}
