//! Resetting TCP connections through netlink sock_diag: a dump of the IPv4 TCP sockets of the
//! calling thread's network namespace, then `SOCK_DESTROY` for each one whose peer is in a set
//! (what `ss -K` does; needs `CONFIG_INET_DIAG_DESTROY` and CAP_NET_ADMIN). The kernel aborts a
//! destroyed socket with ECONNRESET to its owner and sends an RST to the peer, so the client
//! reconnects (and `connect()` runs the datapath's current rules again).
//!
//! Hand-rolled on `libc`: two fixed-layout structs (`inet_diag_req_v2`, `inet_diag_msg`) and
//! the netlink header are all it takes, so no netlink crate is pulled in for it.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error("opening a NETLINK_SOCK_DIAG socket")]
    Socket {
        #[source]
        source: io::Error,
    },
    #[error("sending the sock_diag {what} request")]
    Send {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("reading the sock_diag {what} answer")]
    Recv {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused the sock_diag {what} request")]
    Refused {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDR: usize = 16;
/// `inet_diag_req_v2`: family, protocol, ext, pad, states (u32), `inet_diag_sockid` (48).
const REQ_LEN: usize = 56;
/// `inet_diag_msg`: family, state, timer, retrans, `inet_diag_sockid`, then 5 u32.
const MSG_LEN: usize = 72;

/// TCP states a client socket can be reset in: SYN_SENT, ESTABLISHED, CLOSE_WAIT (the peer
/// closed, the owner has not yet).
const TCPF_RESETTABLE: u32 = (1 << 1) | (1 << 2) | (1 << 8);

/// One socket as the dump names it: enough to destroy exactly that one (the cookie guards
/// against a reused 4-tuple).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockId {
    pub local: SocketAddrV4,
    pub peer: SocketAddrV4,
    ifindex: u32,
    cookie: [u32; 2],
}

/// An open sock_diag socket of the namespace the calling thread is in when it is opened.
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

impl SockDiag {
    pub fn open() -> Result<Self, SockDiagError> {
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(SockDiagError::Socket {
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, seq: 0 })
    }

    /// IPv4 TCP sockets in a resettable state whose peer is in `peers`.
    pub fn tcp4_to(
        &mut self,
        peers: &BTreeSet<SocketAddrV4>,
    ) -> Result<Vec<SockId>, SockDiagError> {
        let what = "dump";
        let req = request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            self.next_seq(),
            TCPF_RESETTABLE,
            None,
        );
        self.send(&req, what)?;
        let mut found = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = self.recv(&mut buf, what)?;
            for (kind, payload) in messages(&buf[..n]) {
                match kind {
                    NLMSG_DONE => return Ok(found),
                    NLMSG_ERROR => check_ack(payload, what)?,
                    SOCK_DIAG_BY_FAMILY if payload.len() >= MSG_LEN => {
                        let id = parse_id(&payload[4..52]);
                        if peers.contains(&id.peer) {
                            found.push(id);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Destroys one socket. `Ok(false)`: it was already gone.
    pub fn destroy(&mut self, id: &SockId) -> Result<bool, SockDiagError> {
        let what = "destroy";
        let req = request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            self.next_seq(),
            u32::MAX,
            Some(id),
        );
        self.send(&req, what)?;
        let mut buf = vec![0u8; 4096];
        let n = self.recv(&mut buf, what)?;
        for (kind, payload) in messages(&buf[..n]) {
            if kind == NLMSG_ERROR {
                return match check_ack(payload, what) {
                    Ok(()) => Ok(true),
                    Err(SockDiagError::Refused { source, .. })
                        if source.raw_os_error() == Some(libc::ENOENT) =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                };
            }
        }
        Ok(true)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, req: &[u8], what: &'static str) -> Result<(), SockDiagError> {
        // SAFETY: a zeroed sockaddr_nl addressed to the kernel (pid 0).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `req` and `kernel` outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                std::ptr::addr_of!(kernel).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(SockDiagError::Send {
                what,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8], what: &'static str) -> Result<usize, SockDiagError> {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(SockDiagError::Recv {
                what,
                source: io::Error::last_os_error(),
            });
        }
        Ok(n as usize)
    }
}

/// A netlink header and an `inet_diag_req_v2` for IPv4 TCP.
fn request(kind: u16, flags: u16, seq: u32, states: u32, id: Option<&SockId>) -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDR + REQ_LEN);
    b.extend_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    b.extend_from_slice(&states.to_ne_bytes());
    let mut sockid = [0u8; 48];
    if let Some(id) = id {
        sockid[0..2].copy_from_slice(&id.local.port().to_be_bytes());
        sockid[2..4].copy_from_slice(&id.peer.port().to_be_bytes());
        sockid[4..8].copy_from_slice(&id.local.ip().octets());
        sockid[20..24].copy_from_slice(&id.peer.ip().octets());
        sockid[36..40].copy_from_slice(&id.ifindex.to_ne_bytes());
        sockid[40..44].copy_from_slice(&id.cookie[0].to_ne_bytes());
        sockid[44..48].copy_from_slice(&id.cookie[1].to_ne_bytes());
    } else {
        // INET_DIAG_NOCOOKIE: no cookie to check.
        sockid[40..48].fill(0xff);
    }
    b.extend_from_slice(&sockid);
    b
}

/// An `inet_diag_sockid` (48 bytes) of an IPv4 socket.
fn parse_id(b: &[u8]) -> SockId {
    let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let ip_at = |o: usize| Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]);
    SockId {
        local: SocketAddrV4::new(ip_at(4), u16::from_be_bytes([b[0], b[1]])),
        peer: SocketAddrV4::new(ip_at(20), u16::from_be_bytes([b[2], b[3]])),
        ifindex: u32_at(36),
        cookie: [u32_at(40), u32_at(44)],
    }
}

/// The netlink messages of one datagram: (type, payload after the header).
fn messages(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < NLMSG_HDR {
            return None;
        }
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if len < NLMSG_HDR || len > b.len() {
            return None;
        }
        let payload = &b[NLMSG_HDR..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((kind, payload))
    })
}

/// An `NLMSG_ERROR` payload: 0 is an acknowledgement, else a negative errno.
fn check_ack(payload: &[u8], what: &'static str) -> Result<(), SockDiagError> {
    let Some(code) = payload.get(..4) else {
        return Ok(());
    };
    let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
    if code == 0 {
        return Ok(());
    }
    Err(SockDiagError::Refused {
        what,
        source: io::Error::from_raw_os_error(-code),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destroy_request_carries_the_dumped_socket_id_back() {
        let id = SockId {
            local: "10.0.0.2:40000".parse().unwrap(),
            peer: "10.0.1.3:8080".parse().unwrap(),
            ifindex: 0,
            cookie: [7, 0],
        };
        let req = request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            1,
            u32::MAX,
            Some(&id),
        );
        assert_eq!(req.len(), NLMSG_HDR + REQ_LEN);
        let back = parse_id(&req[NLMSG_HDR + 8..]);
        assert_eq!(back, id);
    }

    #[test]
    fn messages_split_a_datagram_on_aligned_lengths() {
        let mut b = Vec::new();
        for (kind, payload) in [(NLMSG_ERROR, &[0u8; 5][..]), (NLMSG_DONE, &[0u8; 4][..])] {
            b.extend_from_slice(&((NLMSG_HDR + payload.len()) as u32).to_ne_bytes());
            b.extend_from_slice(&kind.to_ne_bytes());
            b.extend_from_slice(&[0; 10]);
            b.extend_from_slice(payload);
            while b.len() % 4 != 0 {
                b.push(0);
            }
        }
        let kinds: Vec<_> = messages(&b).map(|(k, p)| (k, p.len())).collect();
        assert_eq!(kinds, [(NLMSG_ERROR, 5), (NLMSG_DONE, 4)]);
    }
}
