//! The node proxy's listeners: one per steered frontend, on the port `steer::ProxyPorts` gave it,
//! so the port a connection arrives on names its original ClusterIP:port. Listeners are opened
//! before the maps point at them and closed after the maps moved away, so no connect is ever
//! steered to a port nobody listens on.
//!
//! Each listener is also put in the kernel's `MP_PROXY_SOCKS` sockhash: connect4 steers to it only
//! while it is there, and the kernel drops it when the socket closes, so a proxy that is gone
//! (agent stopped, crashed, killed) leaves its services on the L4 fallback instead of a dead
//! port. [`ProxyListeners::drain`] is the orderly way out: off the sockhash first, then close.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use meshpath_compile::steer::ProxyPorts;
use meshpath_compile::FrontendAddr;
use meshpath_datapath::proxy_socks::ProxySockets;
use meshpath_model::{ClusterModel, Pod};
use meshpath_proxy::{serve_on, OriginalDst, Proxy, Stop, Workers, Workload};

use crate::netns::{bind_tcp, NetnsError};

/// What the proxy knows of a client pod: its labels (`sourceLabels` matches) and its workload
/// (span names and tags, per-workload sampling).
pub struct PodInfo {
    /// Shared with every connection of the pod (no copy per accepted connection).
    labels: meshpath_proxy::Labels,
    workload: Arc<Workload>,
}

/// Pods by IP; swapped whole on every model change.
pub type PodLabels = Arc<BTreeMap<Ipv4Addr, PodInfo>>;

/// The pods of `model`. A pod that `previous` has with the same labels and workload keeps its
/// entry: the proxy's per-workload metric labels are interned in the `Workload`, so a new one
/// on every reconcile pass would make each request after it build its series again.
pub fn pod_labels(model: &ClusterModel, previous: &BTreeMap<Ipv4Addr, PodInfo>) -> PodLabels {
    Arc::new(
        model
            .pods
            .values()
            .filter_map(|p| {
                let ip = p.ip?;
                let w = workload(p);
                let info = match previous.get(&ip) {
                    Some(old) if *old.labels == p.labels && old.workload.same_identity(&w) => {
                        PodInfo {
                            labels: old.labels.clone(),
                            workload: old.workload.clone(),
                        }
                    }
                    _ => PodInfo {
                        labels: Arc::new(p.labels.clone()),
                        workload: Arc::new(w),
                    },
                };
                Some((ip, info))
            })
            .collect(),
    )
}

/// A pod's identity as Istio's proxies label telemetry with it (istio-agent's canonical name
/// and revision rules).
pub fn workload(p: &Pod) -> Workload {
    let label = |keys: &[&str]| keys.iter().find_map(|k| p.labels.get(*k).cloned());
    let app = label(&["app", "app.kubernetes.io/name"]);
    let version = label(&["version", "app.kubernetes.io/version"]);
    Workload {
        name: p.workload.clone(),
        namespace: p.id.namespace.clone(),
        canonical_service: label(&[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ])
        .unwrap_or_else(|| p.workload.clone()),
        canonical_revision: label(&[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ])
        .unwrap_or_else(|| "latest".to_owned()),
        app: app.unwrap_or_else(|| "unknown".to_owned()),
        version: version.unwrap_or_else(|| "unknown".to_owned()),
        trace_sampling: p.trace_sampling_hundredths.map(|h| f64::from(h) / 100.0),
        ..Default::default()
    }
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

    fn source_labels(&self, peer: SocketAddr) -> meshpath_proxy::Labels {
        let IpAddr::V4(ip) = peer.ip() else {
            return meshpath_proxy::no_labels();
        };
        let pods = self.pods.read().map(|p| Arc::clone(&p)).unwrap_or_default();
        pods.get(&ip)
            .map(|p| Arc::clone(&p.labels))
            .unwrap_or_else(meshpath_proxy::no_labels)
    }

    fn source_workload(&self, peer: SocketAddr) -> Option<Arc<Workload>> {
        let IpAddr::V4(ip) = peer.ip() else {
            return None;
        };
        let pods = self.pods.read().map(|p| Arc::clone(&p)).ok()?;
        pods.get(&ip).map(|p| Arc::clone(&p.workload))
    }
}

pub struct ProxyListeners {
    /// The proxy's threads; dropping the last reference stops them.
    workers: Arc<Workers>,
    ip: Ipv4Addr,
    netns: Option<PathBuf>,
    proxy: Arc<Proxy>,
    pods: Arc<RwLock<PodLabels>>,
    open: BTreeMap<u16, Open>,
    socks: ProxySockets,
}

/// A listener's serving task and the switch that drains it.
struct Open {
    frontend: FrontendAddr,
    task: JoinHandle<()>,
    drain: tokio::sync::oneshot::Sender<Stop>,
}

/// After a listener left the sockhash, how long it keeps accepting: a connect that looked the
/// sockhash up just before may still be on its way (its handshake lands in the accept queue,
/// which closing the listener would reset). Same host, so microseconds; this is generous.
const ACCEPT_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

impl ProxyListeners {
    /// The proxy runs on `workers` threads of its own, one single-threaded runtime each
    /// (`meshpath_proxy::Workers`), in `netns` when given (see `netns::workers_in`).
    pub fn new(
        ip: Ipv4Addr,
        netns: Option<PathBuf>,
        proxy: Arc<Proxy>,
        socks: ProxySockets,
        workers: usize,
    ) -> Result<Self, NetnsError> {
        let workers = crate::netns::workers_in(netns.as_deref(), "meshpath-proxy", workers)?;
        Ok(Self {
            workers,
            ip,
            netns,
            proxy,
            pods: Arc::default(),
            open: BTreeMap::new(),
            socks,
        })
    }

    /// Serves `config` from now on (the proxy builds its routing snapshot on this thread and
    /// swaps it in; requests never wait for it).
    pub fn apply_l7(&self, config: Arc<meshpath_model::l7::L7Config>) {
        self.proxy.apply(config);
    }

    /// The pods of `model` from now on (entries of unchanged pods kept, see [`pod_labels`]).
    pub fn update_pods(&self, model: &ClusterModel) {
        let previous = self.pods.read().map(|p| Arc::clone(&p)).unwrap_or_default();
        let next = pod_labels(model, &previous);
        if let Ok(mut p) = self.pods.write() {
            *p = next;
        }
    }

    /// Opens a listener for every port of `ports` that has none (or one for another frontend).
    /// Returns `ports` without the frontends whose listener could not be opened: those stay on
    /// the kernel path.
    pub fn open_missing(&mut self, ports: &ProxyPorts) -> (ProxyPorts, Vec<NetnsError>) {
        let mut ok = ProxyPorts::default();
        let mut errors = Vec::new();
        for (frontend, port) in &ports.by_frontend {
            if self.open.get(port).is_some_and(|o| o.frontend == *frontend) {
                ok.by_frontend.insert(*frontend, *port);
                continue;
            }
            if let Some(old) = self.open.remove(port) {
                old.task.abort();
            }
            let addr = std::net::SocketAddrV4::new(self.ip, *port);
            let bound = bind_tcp(self.netns.as_deref(), addr.into()).and_then(|l| {
                // Without its sockhash entry connect4 would never steer here: such a frontend
                // stays on the kernel path, as with a failed bind.
                self.socks
                    .insert(addr, &l)
                    .map(|()| l)
                    .map_err(|source| NetnsError::Register {
                        addr: addr.into(),
                        source: Box::new(source),
                    })
            });
            match bound {
                Ok(std_listener) => {
                    // The accept loops are dealt over the workers too; each hands the
                    // connections it accepts round-robin to all of them.
                    let (_, runtime) = self.workers.next();
                    let _in_rt = runtime.enter();
                    let task = std_listener
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpListener::from_std(std_listener));
                    match task {
                        Ok(listener) => {
                            let dst = Arc::new(FixedDst {
                                frontend: SocketAddr::new(frontend.ip.into(), frontend.port),
                                pods: Arc::clone(&self.pods),
                            });
                            let (drain, drained) = tokio::sync::oneshot::channel::<Stop>();
                            let serving = serve_on(
                                Arc::clone(&self.workers),
                                listener,
                                dst,
                                Arc::clone(&self.proxy),
                                async {
                                    // A listener dropped without a word leaves its connections be.
                                    drained.await.unwrap_or(Stop::Detach)
                                },
                            );
                            let task = runtime.spawn(serving);
                            info!(%frontend.ip, frontend.port, proxy_port = port, "proxy listener open");
                            self.open.insert(
                                *port,
                                Open {
                                    frontend: *frontend,
                                    task,
                                    drain,
                                },
                            );
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
            if let Some(o) = self.open.remove(&port) {
                // The connections this listener serves keep being served (the proxy routes them
                // by the new config) until their clients close them. The port is released at
                // once: the allocator may hand it to another frontend in the same pass.
                let _ = o.drain.send(Stop::Detach);
                info!(%o.frontend.ip, o.frontend.port, proxy_port = port, "proxy listener closed");
            }
        }
    }

    /// The orderly stop (SIGTERM): every listener leaves the sockhash, so connect4 sends new
    /// connections to the L4 fallback (or refuses them, fail-closed), keeps accepting for
    /// [`ACCEPT_GRACE`], then closes; the connections it holds finish their current request and
    /// close. Returns when all have, or after `timeout`.
    pub async fn drain(&mut self, timeout: std::time::Duration) {
        if self.open.is_empty() {
            return;
        }
        for port in self.open.keys() {
            let addr = std::net::SocketAddrV4::new(self.ip, *port);
            if let Err(error) = self.socks.remove(addr) {
                warn!(%error, proxy_port = port, "proxy listener not taken off the sockhash; closing it removes it");
            }
        }
        tokio::time::sleep(ACCEPT_GRACE).await;
        let listeners = self.open.len();
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut self.open)
            .into_values()
            .map(|o| {
                let _ = o.drain.send(Stop::Drain);
                o.task
            })
            .collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        match tokio::time::timeout(timeout, all).await {
            Ok(_) => info!(listeners, "proxy drained: in-flight requests finished"),
            Err(_) => warn!(
                listeners,
                ?timeout,
                "proxy drain timed out; remaining connections are cut"
            ),
        }
    }
}

impl Drop for ProxyListeners {
    fn drop(&mut self) {
        // The accept loops hold the pool too: stop it explicitly, with every connection.
        self.workers.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_model::ObjectRef;

    fn model(app: &str) -> ClusterModel {
        let mut m = ClusterModel::default();
        let p = Pod {
            id: ObjectRef::new("shop", "client-1"),
            labels: [("app".to_owned(), app.to_owned())].into(),
            ip: Some(Ipv4Addr::new(10, 244, 0, 9)),
            container_ports: vec![],
            placement: Default::default(),
            workload: "client".to_owned(),
            trace_sampling_hundredths: None,
            socket_redirect: None,
        };
        m.pods.insert(p.id.clone(), p);
        m
    }

    #[test]
    fn an_unchanged_pod_keeps_its_entry() {
        let ip = Ipv4Addr::new(10, 244, 0, 9);
        let first = pod_labels(&model("web"), &BTreeMap::new());
        let same = pod_labels(&model("web"), &first);
        assert!(Arc::ptr_eq(&first[&ip].workload, &same[&ip].workload));
        assert!(Arc::ptr_eq(&first[&ip].labels, &same[&ip].labels));
        let relabelled = pod_labels(&model("shop"), &same);
        assert!(!Arc::ptr_eq(&same[&ip].workload, &relabelled[&ip].workload));
        assert_eq!(relabelled[&ip].workload.app, "shop");
    }
}
