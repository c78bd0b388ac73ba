//! Where a sock_addr context keeps the IPv4 address: `user_ip4` for AF_INET sockets, or the last
//! word of a v4-mapped `user_ip6` (`::ffff:a.b.c.d`) for dual-stack AF_INET6 sockets. Java, and
//! any runtime that opens AF_INET6 sockets by default, reaches an IPv4 ClusterIP that way, through
//! connect6/sendmsg6; without this those clients would bypass the service translation.

use aya_ebpf::bindings::bpf_sock_addr;

#[derive(Clone, Copy)]
pub enum Family {
    V4,
    V4MappedV6,
}

/// `::ffff:0:0/96` as the third 32-bit word of an IPv6 address read natively (bytes 00 00 ff ff).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The IPv4 address in network order, or `None` for a real IPv6 address.
#[inline(always)]
pub fn read_ip(sa: *mut bpf_sock_addr, family: Family) -> Option<u32> {
    // SAFETY: the kernel hands sock_addr programs a valid context; 4-byte reads are allowed.
    unsafe {
        match family {
            Family::V4 => Some((*sa).user_ip4),
            Family::V4MappedV6 => {
                let ip6 = (*sa).user_ip6;
                (ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_WORD).then_some(ip6[3])
            }
        }
    }
}

#[inline(always)]
pub fn write_ip(sa: *mut bpf_sock_addr, family: Family, ip_be: u32) {
    // SAFETY: connect/sendmsg/recvmsg/getpeername programs may write user_ip4/user_ip6 words.
    unsafe {
        match family {
            Family::V4 => (*sa).user_ip4 = ip_be,
            Family::V4MappedV6 => {
                (*sa).user_ip6[0] = 0;
                (*sa).user_ip6[1] = 0;
                (*sa).user_ip6[2] = V4_MAPPED_WORD;
                (*sa).user_ip6[3] = ip_be;
            }
        }
    }
}
