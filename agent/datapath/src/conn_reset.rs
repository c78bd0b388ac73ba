//! Resetting the managed pods' TCP connections to given peers, so their clients reconnect and
//! `connect()` runs the datapath's current rules (a service that became steered to the node
//! proxy, a backend that left its service).
//!
//! sock_diag sees only the namespace it is opened in, so the pods' network namespaces are found
//! from the processes of the managed cgroup tree, and a dedicated OS thread enters each in turn
//! (setns is per thread; the agent's other threads never leave its namespace) and ends when
//! done. Namespaces in `exclude` (the agent's own, where the proxy's upstream connections live)
//! are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::sock_diag::{SockDiag, SockDiagError};

#[derive(Debug, thiserror::Error)]
pub enum ConnResetError {
    #[error("reading the managed cgroup tree {}", path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading network namespace {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entering the network namespace of pid {pid}")]
    Enter {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("in the network namespace of pid {pid}")]
    Diag {
        pid: u32,
        #[source]
        source: SockDiagError,
    },
    #[error("starting the connection-reset thread")]
    Thread {
        #[source]
        source: io::Error,
    },
    #[error("the connection-reset thread panicked")]
    Panicked,
}

/// A network namespace's identity: the device and inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    /// The namespace at `path` (`/proc/<pid>/ns/net`, `/var/run/netns/NAME`).
    pub fn of(path: &Path) -> Result<Self, ConnResetError> {
        let m = std::fs::metadata(path).map_err(|source| ConnResetError::Netns {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// What one pass reset.
#[derive(Debug, Default)]
pub struct ResetOutcome {
    /// Namespaces searched.
    pub namespaces: usize,
    /// Destroyed sockets, by the peer they were connected to.
    pub reset: BTreeMap<SocketAddrV4, u64>,
    /// Namespaces that could not be searched (the pod went away meanwhile, …): logged, skipped.
    pub errors: Vec<ConnResetError>,
}

/// Resets every resettable TCP connection to one of `peers` in the namespaces of the processes
/// under `cgroup`, except those in `exclude`. Blocks until done (call it off the async runtime).
pub fn reset_connections(
    cgroup: &Path,
    exclude: &BTreeSet<NetnsId>,
    peers: &BTreeSet<SocketAddrV4>,
) -> Result<ResetOutcome, ConnResetError> {
    let mut outcome = ResetOutcome::default();
    if peers.is_empty() {
        return Ok(outcome);
    }
    let namespaces = pod_namespaces(cgroup, exclude)?;
    outcome.namespaces = namespaces.len();
    if namespaces.is_empty() {
        return Ok(outcome);
    }
    let peers = peers.clone();
    let worker = std::thread::Builder::new()
        .name("conn-reset".into())
        .spawn(move || {
            let mut reset = BTreeMap::new();
            let mut errors = Vec::new();
            for (pid, ns) in namespaces {
                if let Err(e) = reset_in(pid, &ns, &peers, &mut reset) {
                    errors.push(e);
                }
            }
            (reset, errors)
        })
        .map_err(|source| ConnResetError::Thread { source })?;
    let (reset, errors) = worker.join().map_err(|_| ConnResetError::Panicked)?;
    outcome.reset = reset;
    outcome.errors = errors;
    Ok(outcome)
}

/// On the reset thread: enter `ns`, dump, destroy the matches.
fn reset_in(
    pid: u32,
    ns: &File,
    peers: &BTreeSet<SocketAddrV4>,
    reset: &mut BTreeMap<SocketAddrV4, u64>,
) -> Result<(), ConnResetError> {
    // SAFETY: setns on this thread only, with an open nsfs descriptor.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(ConnResetError::Enter {
            pid,
            source: io::Error::last_os_error(),
        });
    }
    let diag = |source| ConnResetError::Diag { pid, source };
    let mut sd = SockDiag::open().map_err(diag)?;
    for id in sd.tcp4_to(peers).map_err(diag)? {
        if sd.destroy(&id).map_err(diag)? {
            debug!(pid, local = %id.local, peer = %id.peer, "connection reset");
            *reset.entry(id.peer).or_default() += 1;
        }
    }
    Ok(())
}

/// One open namespace file per distinct namespace of the processes under `cgroup`, with a pid
/// that was in it. Processes that exit meanwhile are skipped.
fn pod_namespaces(
    cgroup: &Path,
    exclude: &BTreeSet<NetnsId>,
) -> Result<Vec<(u32, File)>, ConnResetError> {
    let mut pids = Vec::new();
    cgroup_pids(cgroup, &mut pids)?;
    let mut seen = exclude.clone();
    let mut out = Vec::new();
    for pid in pids {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(m) = file.metadata() else { continue };
        if seen.insert(NetnsId {
            dev: m.dev(),
            ino: m.ino(),
        }) {
            out.push((pid, file));
        }
    }
    Ok(out)
}

/// The pids of `dir`'s `cgroup.procs` and of every descendant cgroup's.
fn cgroup_pids(dir: &Path, pids: &mut Vec<u32>) -> Result<(), ConnResetError> {
    let err = |source| ConnResetError::Cgroup {
        path: dir.to_owned(),
        source,
    };
    match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
        // A child cgroup removed while walking.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            cgroup_pids(&entry.path(), pids)?;
        }
    }
    Ok(())
}
