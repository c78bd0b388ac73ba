//! Resetting the managed pods' TCP connections to given peers, so their clients reconnect and
//! `connect()` runs the datapath's current rules (a service that became steered to the node
//! proxy, a backend that left its service).
//!
//! sock_diag sees only the namespace it is opened in, so the pods' network namespaces are found
//! from the processes of the managed cgroup tree (`netns`), and a dedicated OS thread enters each in turn
//! (setns is per thread; the agent's other threads never leave its namespace) and ends when
//! done. Namespaces in `exclude` (the agent's own, where the proxy's upstream connections live)
//! are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::path::Path;

use tracing::debug;

use crate::netns::{pod_namespaces, NetnsError, NetnsId};
use crate::sock_diag::{SockDiag, SockDiagError};

#[derive(Debug, thiserror::Error)]
pub enum ConnResetError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
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
