//! Attaching the tc programs to the node's uplink: TCX links (kernel ≥ 6.6), pinned under the
//! pin directory like the cgroup programs' so they keep serving while the agent restarts, and
//! replaced new-before-old; on an older kernel the legacy clsact qdisc (those filters are not
//! pinned: they stay until the agent's next start replaces them or `meshpath cleanup`).
//!
//! The uplink may live in another network namespace than the agent (tests, an agent outside
//! the host namespace): interface names, addresses and the attachment itself resolve in the
//! calling thread's namespace, so that work runs on a short-lived thread that entered it.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::tc::{self, NlOptions, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::Ebpf;
use meshpath_common::tc::{PROG_TC_CT_RELEASE, PROG_TC_EGRESS, PROG_TC_INGRESS};
use tracing::{info, warn};

use crate::links;

/// Where the tc programs attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub iface: String,
    /// The network namespace of `iface` (`/var/run/netns/NAME`, `/proc/PID/ns/net`); `None`:
    /// the agent's own.
    pub netns: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("the eBPF object has no program {name}: it is older than this agent")]
    MissingProgram { name: &'static str },
    #[error("tc program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("entering network namespace {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the addresses of {iface}")]
    Addresses {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{iface} has no IPv4 address: NodePorts would match nothing")]
    NoAddress { iface: String },
    #[error("pinning the tc link of {name}")]
    Pin {
        name: &'static str,
        #[source]
        source: Box<crate::DatapathError>,
    },
    #[error("the attach thread panicked")]
    Thread,
}

/// How the programs ended up attached, and the node's addresses on the uplink.
pub struct Attached {
    pub node_ips: Vec<Ipv4Addr>,
    pub mode: &'static str,
    /// Gives back the connection slots of counted flows whose conntrack entry is gone (see
    /// [`crate::tc_limit`]); `None` with an object older than the tc connection limit.
    pub releaser: Option<crate::tc_limit::Releaser>,
    /// Pinned TCX links (kept so drop order is explicit; the pins hold them).
    _pinned: Vec<aya::programs::links::PinnedLink>,
}

/// Loads both programs and attaches them to `uplink`.
pub fn attach(ebpf: &mut Ebpf, uplink: &Uplink, pin_dir: &Path) -> Result<Attached, UplinkError> {
    for name in [PROG_TC_INGRESS, PROG_TC_EGRESS] {
        program(ebpf, name)?
            .load()
            .map_err(|source| UplinkError::Program { name, source })?;
    }
    let releaser = match load_releaser(ebpf) {
        Ok(r) => Some(r),
        Err(error) => {
            warn!(%error, source = ?std::error::Error::source(&error), "no release program: the slots of tc flows the conntrack evicts are not given back");
            None
        }
    };
    let ns = match &uplink.netns {
        Some(path) => Some(File::open(path).map_err(|source| UplinkError::Netns {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            if let (Some(file), Some(path)) = (&ns, &uplink.netns) {
                // SAFETY: setns on a namespace fd we own; it changes only this scoped thread,
                // which ends with this function.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(UplinkError::Netns {
                        path: path.clone(),
                        source: std::io::Error::last_os_error(),
                    });
                }
            }
            attach_here(ebpf, &uplink.iface, pin_dir)
        })
        .join()
        .map_err(|_| UplinkError::Thread)?
    })
    .map(|mut attached| {
        attached.releaser = releaser;
        attached
    })
}

/// Loads `mp_tc_ct_release` (never attached; once per object) and keeps a descriptor of it.
pub(crate) fn load_releaser(ebpf: &mut Ebpf) -> Result<crate::tc_limit::Releaser, UplinkError> {
    let name = PROG_TC_CT_RELEASE;
    let prog = program(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load()
            .map_err(|source| UplinkError::Program { name, source })?;
    }
    let fd = prog
        .fd()
        .map_err(|source| UplinkError::Program { name, source })?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| UplinkError::Program {
            name,
            source: aya::programs::ProgramError::IOError(source),
        })?;
    Ok(crate::tc_limit::Releaser::new(fd))
}

fn attach_here(ebpf: &mut Ebpf, iface: &str, pin_dir: &Path) -> Result<Attached, UplinkError> {
    let node_ips = ipv4_addresses(iface)?;
    if node_ips.is_empty() {
        return Err(UplinkError::NoAddress {
            iface: iface.to_owned(),
        });
    }
    let mut pinned = Vec::new();
    let mut mode = "tcx";
    for (name, dir) in [
        (PROG_TC_INGRESS, TcAttachType::Ingress),
        (PROG_TC_EGRESS, TcAttachType::Egress),
    ] {
        let prog = program(ebpf, name)?;
        let pin = links::pin_path(pin_dir, name);
        match prog.attach_with_options(iface, dir, TcAttachOptions::TcxOrder(LinkOrder::default()))
        {
            Ok(id) => {
                let link: FdLink = prog
                    .take_link(id)
                    .map_err(|source| UplinkError::Program { name, source })?
                    .try_into()
                    .map_err(|source| UplinkError::Pin {
                        name,
                        source: Box::new(crate::DatapathError::Link { name, source }),
                    })?;
                // New before old: the previous agent's link (if any) goes only now.
                pinned.push(links::pin_replacing(link, &pin).map_err(|source| {
                    UplinkError::Pin {
                        name,
                        source: Box::new(source),
                    }
                })?);
            }
            Err(error) => {
                // TCX is Linux 6.6+; older kernels take the clsact qdisc.
                warn!(program = name, %iface, %error, "TCX attach failed; falling back to a clsact filter");
                mode = "clsact";
                links::detach_pinned(&pin).map_err(|source| UplinkError::Pin {
                    name,
                    source: Box::new(source),
                })?;
                if let Err(error) = tc::qdisc_add_clsact(iface) {
                    // Already there (another program, or a previous agent): fine.
                    info!(%iface, %error, "clsact qdisc not added");
                }
                // The previous agent's filter of the same name goes first: two would both NAT.
                let _ = tc::qdisc_detach_program(iface, dir, name);
                let id = prog
                    .attach_with_options(iface, dir, TcAttachOptions::Netlink(NlOptions::default()))
                    .map_err(|source| UplinkError::Program { name, source })?;
                // Kept attached when the agent exits, like a pinned link: forget the link so
                // dropping the program does not detach it.
                std::mem::forget(
                    prog.take_link(id)
                        .map_err(|source| UplinkError::Program { name, source })?,
                );
            }
        }
        info!(program = name, %iface, mode, "attached");
    }
    Ok(Attached {
        node_ips,
        mode,
        releaser: None,
        _pinned: pinned,
    })
}

/// Detaches what a previous agent left on the uplink (the tc path switched off).
pub fn detach_pinned(pin_dir: &Path) -> Result<(), crate::DatapathError> {
    for name in [PROG_TC_INGRESS, PROG_TC_EGRESS] {
        links::detach_pinned(&links::pin_path(pin_dir, name))?;
    }
    Ok(())
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, UplinkError> {
    ebpf.program_mut(name)
        .ok_or(UplinkError::MissingProgram { name })?
        .try_into()
        .map_err(|source| UplinkError::Program { name, source })
}

/// The IPv4 addresses of `iface` in this thread's network namespace.
fn ipv4_addresses(iface: &str) -> Result<Vec<Ipv4Addr>, UplinkError> {
    let io = |source| UplinkError::Addresses {
        iface: iface.to_owned(),
        source,
    };
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: as above; names are NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: as above.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        if name.to_bytes() != iface.as_bytes() || family != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
