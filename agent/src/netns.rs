//! Opening listening sockets inside another network namespace. A socket stays in the namespace it
//! was created in, so a short-lived thread enters the namespace (setns is per thread), binds, and
//! hands the socket back; the rest of the agent never leaves its own namespace. This is how the
//! node proxy listens where pods can reach it (e.g. on the pods' gateway address) while the agent
//! itself runs elsewhere, like ztunnel's in-pod mode opens sockets in pod namespaces.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {}", path.display())]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the proxy runtime")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the proxy's worker threads")]
    Workers {
        #[source]
        source: meshpath_proxy::WorkersError,
    },
    #[error("putting the proxy listener {addr} in the kernel's proxy sockhash")]
    Register {
        addr: SocketAddr,
        #[source]
        source: Box<meshpath_datapath::DatapathError>,
    },
}

/// Binds a TCP listener on `addr`, inside `netns` (a path like `/var/run/netns/NAME`) when given.
pub fn bind_tcp(netns: Option<&Path>, addr: SocketAddr) -> Result<TcpListener, NetnsError> {
    bind_in(netns, addr, TcpListener::bind)
}

/// Binds a UDP socket on `addr`, inside `netns` when given (the DNS listeners).
pub fn bind_udp(netns: Option<&Path>, addr: SocketAddr) -> Result<UdpSocket, NetnsError> {
    bind_in(netns, addr, UdpSocket::bind)
}

fn bind_in<S: Send>(
    netns: Option<&Path>,
    addr: SocketAddr,
    bind_fn: fn(SocketAddr) -> std::io::Result<S>,
) -> Result<S, NetnsError> {
    let bind = move || bind_fn(addr).map_err(|source| NetnsError::Bind { addr, source });
    let Some(path) = netns else { return bind() };
    let file = std::fs::File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a namespace fd we own; it only changes this (short-lived) thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetnsError::Enter {
                    path: path.to_path_buf(),
                    source: std::io::Error::last_os_error(),
                });
            }
            bind()
        })
        .join()
        .expect("bind thread does not panic")
    })
}

/// A tokio runtime whose threads all live in `netns` (when given): new threads inherit the network
/// namespace of the thread that creates them, so the runtime is built on a thread that entered it
/// first. The DNS responder runs there (the node proxy's threads enter the namespace
/// themselves, [`workers_in`]).
pub fn runtime_in(
    netns: Option<&Path>,
    name: &str,
    workers: usize,
) -> Result<tokio::runtime::Runtime, NetnsError> {
    let file = match netns {
        Some(path) => Some((
            path.to_path_buf(),
            std::fs::File::open(path).map_err(|source| NetnsError::Open {
                path: path.to_path_buf(),
                source,
            })?,
        )),
        None => None,
    };
    let name = name.to_string();
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some((path, file)) = &file {
                // SAFETY: setns on a namespace fd we own; it changes only this builder thread,
                // whose children (the runtime's workers) inherit it.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(NetnsError::Enter {
                        path: path.clone(),
                        source: std::io::Error::last_os_error(),
                    });
                }
            }
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers.max(1))
                .thread_name(name)
                .enable_all()
                .build()
                .map_err(|source| NetnsError::Runtime { source })
        })
        .join()
        .expect("runtime builder thread does not panic")
    })
}

/// The proxy's worker threads (`meshpath_proxy::Workers`), each of which first enters `netns`
/// when given: its upstream connections to pods are made from where the pods are reachable.
pub fn workers_in(
    netns: Option<&Path>,
    name: &str,
    count: usize,
) -> Result<std::sync::Arc<meshpath_proxy::Workers>, NetnsError> {
    let file = match netns {
        Some(path) => Some(
            std::fs::File::open(path).map_err(|source| NetnsError::Open {
                path: path.to_path_buf(),
                source,
            })?,
        ),
        None => None,
    };
    meshpath_proxy::Workers::start(count, name, move || match &file {
        // SAFETY: setns on a namespace fd we own; it changes only the calling worker thread.
        Some(f) if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 => {
            Err(std::io::Error::last_os_error())
        }
        _ => Ok(()),
    })
    .map_err(|source| NetnsError::Workers { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_in_the_current_namespace_without_a_path() {
        let l = bind_tcp(None, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        assert!(l.local_addr().expect("addr").port() > 0);
    }

    #[test]
    fn a_missing_namespace_is_named_in_the_error() {
        let err = bind_tcp(
            Some(Path::new("/var/run/netns/does-not-exist-mp")),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect_err("no such netns");
        assert!(err.to_string().contains("does-not-exist-mp"), "{err}");
    }
}
