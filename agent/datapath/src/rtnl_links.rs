//! The calling thread's network namespace's links as rtnetlink reports them (`RTM_GETLINK`
//! dump): index, name and `IFLA_LINK`, which for a veth is its peer's ifindex in the peer's
//! namespace. sysfs cannot tell: it shows the namespace it was mounted in, not the thread's.

use std::io;

/// One link of the namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_LINK`: the peer's ifindex for a veth; the link's own index (or 0) otherwise.
    pub peer_index: u32,
}

const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// Every link of the calling thread's network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let mut req = [0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
    let total = req.len() as u32;
    req[0..4].copy_from_slice(&total.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[NLMSG_HDRLEN] = libc::AF_UNSPEC as u8;
    // SAFETY: `req` is a live buffer of the length passed; the kernel is the destination.
    if unsafe { libc::send(raw, req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is a live, writable buffer of the length passed.
        let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if parse(&buf[..n as usize], &mut out)? {
            return Ok(out);
        }
    }
}

/// Parses one datagram of the dump into `out`; `Ok(true)` once the dump is done.
fn parse(mut data: &[u8], out: &mut Vec<Link>) -> io::Result<bool> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short rtnetlink message");
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().unwrap());
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(bad());
        }
        let msg = &data[NLMSG_HDRLEN..len];
        match kind as i32 {
            libc::NLMSG_DONE => return Ok(true),
            libc::NLMSG_ERROR => {
                let errno = msg
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .ok_or_else(bad)?;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            k if k == libc::RTM_NEWLINK as i32 => {
                if msg.len() < IFINFOMSG_LEN {
                    return Err(bad());
                }
                let index = i32::from_ne_bytes(msg[4..8].try_into().unwrap()) as u32;
                let mut link = Link {
                    index,
                    name: String::new(),
                    peer_index: 0,
                };
                let mut attrs = &msg[IFINFOMSG_LEN..];
                while attrs.len() >= 4 {
                    let alen = u16::from_ne_bytes(attrs[0..2].try_into().unwrap()) as usize;
                    let akind = u16::from_ne_bytes(attrs[2..4].try_into().unwrap()) & 0x3fff;
                    if alen < 4 || alen > attrs.len() {
                        break;
                    }
                    let value = &attrs[4..alen];
                    match akind {
                        IFLA_IFNAME => {
                            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
                            link.name = String::from_utf8_lossy(&value[..end]).into_owned();
                        }
                        IFLA_LINK if value.len() >= 4 => {
                            link.peer_index = u32::from_ne_bytes(value[0..4].try_into().unwrap());
                        }
                        _ => {}
                    }
                    let step = (alen + 3) & !3;
                    attrs = &attrs[step.min(attrs.len())..];
                }
                out.push(link);
            }
            _ => {}
        }
        let step = (len + 3) & !3;
        data = &data[step.min(data.len())..];
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_namespace_lists_loopback_with_its_index() {
        let links = links().expect("rtnetlink dump");
        let lo = links.iter().find(|l| l.name == "lo").expect("lo listed");
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert_eq!(lo.index, index);
    }
}
