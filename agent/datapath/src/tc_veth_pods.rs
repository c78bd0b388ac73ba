//! Which local pods have a veth whose host end is in this thread's namespace: the pods' network
//! namespaces come from the managed cgroup tree's processes (`netns`); inside each, every link
//! with a peer (`IFLA_LINK`) and an IPv4 address is a candidate, kept only when the host has a
//! link at that peer index pointing back at it (so a pod's other links, or an index that
//! happens to exist on the host, never match).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::netns::{self, NetnsError, NetnsId};
use crate::rtnl_links::{self, Link};
use crate::tc_veth::PodVeth;

#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error("finding the pods' network namespaces")]
    Netns(#[from] NetnsError),
    #[error("listing the links of the veths' host namespace")]
    HostLinks(#[source] std::io::Error),
}

/// The pods (address, host-side veth) of the processes below `cgroup`. Pods whose namespace
/// cannot be entered or read (exited meanwhile) are skipped.
pub fn local_pods(cgroup: &Path) -> Result<Vec<PodVeth>, PodsError> {
    let own = File::open("/proc/thread-self/ns/net")
        .and_then(|f| NetnsId::of_file(&f))
        .map_err(PodsError::HostLinks)?;
    let host: BTreeMap<u32, u32> = rtnl_links::links()
        .map_err(PodsError::HostLinks)?
        .into_iter()
        .map(|l| (l.index, l.peer_index))
        .collect();
    let mut out = BTreeSet::new();
    for (_pid, ns) in netns::pod_namespaces(cgroup, &[own].into())? {
        let Some(seen) = inside(&ns) else { continue };
        for (link, ips) in seen {
            let peer = link.peer_index;
            if peer == 0 || peer == link.index && link.name == "lo" {
                continue;
            }
            if host.get(&peer) != Some(&link.index) {
                continue;
            }
            out.extend(ips.into_iter().map(|ip| PodVeth {
                ip,
                host_ifindex: peer,
            }));
        }
    }
    Ok(out.into_iter().collect())
}

/// The links with a peer and their IPv4 addresses, read on a thread that entered `ns`.
fn inside(ns: &File) -> Option<Vec<(Link, Vec<Ipv4Addr>)>> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a namespace fd we hold; it changes only this scoped thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            let links = rtnl_links::links().ok()?;
            let addrs = ipv4_by_name();
            Some(
                links
                    .into_iter()
                    .filter(|l| l.peer_index != 0 && l.peer_index != l.index)
                    .filter_map(|l| {
                        let ips = addrs.get(&l.name)?.clone();
                        Some((l, ips))
                    })
                    .collect(),
            )
        })
        .join()
        .ok()
        .flatten()
    })
}

/// Interface name → its IPv4 addresses, in this thread's namespace.
fn ipv4_by_name() -> BTreeMap<String, Vec<Ipv4Addr>> {
    let mut out: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: as above.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: as above; names are NUL-terminated, an AF_INET address is a sockaddr_in.
        let (name, sin) = unsafe {
            (
                std::ffi::CStr::from_ptr(ifa.ifa_name),
                &*(ifa.ifa_addr as *const libc::sockaddr_in),
            )
        };
        out.entry(name.to_string_lossy().into_owned())
            .or_default()
            .push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}
