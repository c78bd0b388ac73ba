//! The node proxy's listeners: one per steered frontend, on the port `steer::ProxyPorts` gave it,
//! so the port a connection arrives on names its original ClusterIP:port. Listeners are opened
//! before the maps point at them and closed after the maps moved away, so no connect is ever
//! steered to a port nobody listens on.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use meshpath_compile::steer::ProxyPorts;
use meshpath_compile::FrontendAddr;
use meshpath_model::ClusterModel;
use meshpath_proxy::{serve, OriginalDst, Proxy};

use crate::netns::{bind_tcp, NetnsError};

/// Pod labels by pod IP, for `sourceLabels` matches; swapped whole on every model change.
pub type PodLabels = Arc<BTreeMap<Ipv4Addr, BTreeMap<String, String>>>;

pub fn pod_labels(model: &ClusterModel) -> PodLabels {
    Arc::new(
        model
            .pods
            .values()
            .filter_map(|p| Some((p.ip?, p.labels.clone())))
            .collect(),
    )
}

/// A listener's original destination is fixed: the frontend it was opened for.
struct FixedDst {
    frontend: SocketAddr,
    pods: Arc<RwLock<PodLabels>>,
}

impl OriginalDst for FixedDst {
    fn original_dst(&self, _stream: &TcpStream, _peer: SocketAddr) -> Option<SocketAddr> {
        Some(self.frontend)
    }

    fn source_labels(&self, peer: SocketAddr) -> BTreeMap<String, String> {
        let IpAddr::V4(ip) = peer.ip() else {
            return BTreeMap::new();
        };
        let pods = self.pods.read().map(|p| Arc::clone(&p)).unwrap_or_default();
        pods.get(&ip).cloned().unwrap_or_default()
    }
}

pub struct ProxyListeners {
    /// `Option` only so `Drop` can take it: a runtime dropped inside the agent's async context
    /// would panic, so it is shut down in the background instead.
    rt: Option<tokio::runtime::Runtime>,
    ip: Ipv4Addr,
    netns: Option<PathBuf>,
    proxy: Arc<Proxy>,
    pods: Arc<RwLock<PodLabels>>,
    open: BTreeMap<u16, (FrontendAddr, JoinHandle<()>)>,
}

impl ProxyListeners {
    /// The proxy runs on a runtime of its own, in `netns` when given (see `netns::runtime_in`).
    pub fn new(
        ip: Ipv4Addr,
        netns: Option<PathBuf>,
        proxy: Arc<Proxy>,
    ) -> Result<Self, NetnsError> {
        let rt = crate::netns::runtime_in(netns.as_deref(), "meshpath-proxy")?;
        Ok(Self {
            rt: Some(rt),
            ip,
            netns,
            proxy,
            pods: Arc::default(),
            open: BTreeMap::new(),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime present until drop")
    }

    pub fn set_pod_labels(&self, labels: PodLabels) {
        if let Ok(mut p) = self.pods.write() {
            *p = labels;
        }
    }

    /// Opens a listener for every port of `ports` that has none (or one for another frontend).
    /// Returns `ports` without the frontends whose listener could not be opened: those stay on
    /// the kernel path.
    pub fn open_missing(&mut self, ports: &ProxyPorts) -> (ProxyPorts, Vec<NetnsError>) {
        let mut ok = ProxyPorts::default();
        let mut errors = Vec::new();
        for (frontend, port) in &ports.by_frontend {
            if self.open.get(port).is_some_and(|(f, _)| f == frontend) {
                ok.by_frontend.insert(*frontend, *port);
                continue;
            }
            if let Some((_, old)) = self.open.remove(port) {
                old.abort();
            }
            match bind_tcp(
                self.netns.as_deref(),
                SocketAddr::new(self.ip.into(), *port),
            ) {
                Ok(std_listener) => {
                    let _in_rt = self.rt().enter();
                    let task = std_listener
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpListener::from_std(std_listener));
                    match task {
                        Ok(listener) => {
                            let dst = Arc::new(FixedDst {
                                frontend: SocketAddr::new(frontend.ip.into(), frontend.port),
                                pods: Arc::clone(&self.pods),
                            });
                            let handle =
                                self.rt()
                                    .spawn(serve(listener, dst, Arc::clone(&self.proxy)));
                            info!(%frontend.ip, frontend.port, proxy_port = port, "proxy listener open");
                            self.open.insert(*port, (*frontend, handle));
                            ok.by_frontend.insert(*frontend, *port);
                        }
                        Err(source) => errors.push(NetnsError::Bind {
                            addr: SocketAddr::new(self.ip.into(), *port),
                            source,
                        }),
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        for e in &errors {
            warn!(error = %e, "proxy listener not opened; its frontend stays on the kernel path");
        }
        (ok, errors)
    }

    /// Closes listeners no frontend uses any more (call after the maps stopped steering to them).
    pub fn close_unused(&mut self, ports: &ProxyPorts) {
        let keep: std::collections::BTreeSet<u16> = ports.by_frontend.values().copied().collect();
        let stale: Vec<u16> = self
            .open
            .keys()
            .filter(|p| !keep.contains(p))
            .copied()
            .collect();
        for port in stale {
            if let Some((frontend, handle)) = self.open.remove(&port) {
                handle.abort();
                info!(%frontend.ip, frontend.port, proxy_port = port, "proxy listener closed");
            }
        }
    }
}

impl Drop for ProxyListeners {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
