//! The DNS listeners: per captured resolver one UDP socket and one TCP listener on the same port,
//! on their own runtime in the proxy's network namespace (so relayed queries leave from where the
//! pods' resolvers are reachable). Opened before the maps steer to them, closed after the maps
//! moved away, like the proxy's listeners. The name table is swapped whole on every model change;
//! a query only clones an `Arc` under a read lock.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, RwLock};

use hickory_proto::op::ResponseCode;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::answer::{self, Action};
use super::forward::{self, read_framed, write_framed, MAX_UDP};
use super::names::NameTable;
use super::steer::DnsSteering;
use super::{DnsConfig, DnsError, DnsMetrics, KUBE_DNS};
use crate::netns::{bind_tcp, bind_udp, NetnsError};
use meshpath_compile::{Compiled, FrontendAddr};
use meshpath_model::{ClusterModel, ObjectRef, Protocol};

/// What every query task shares.
struct Shared {
    table: RwLock<Arc<NameTable>>,
    metrics: DnsMetrics,
    relaying: forward::Relaying,
}

impl Shared {
    fn table(&self) -> Arc<NameTable> {
        self.table
            .read()
            .map(|t| Arc::clone(&t))
            .unwrap_or_default()
    }
}

struct Listener {
    port: u16,
    /// Where its unowned queries go: the resolver itself, or kube-dns's pods when the resolver
    /// is kube-dns's ClusterIP (the agent's own sockets are not translated by the kernel).
    upstreams: Arc<RwLock<Vec<SocketAddr>>>,
    tasks: [JoinHandle<()>; 2],
}

pub struct DnsServer {
    /// `Option` only so `Drop` can shut it down in the background (see `ProxyListeners`).
    rt: Option<tokio::runtime::Runtime>,
    cfg: DnsConfig,
    shared: Arc<Shared>,
    open: BTreeMap<SocketAddrV4, Listener>,
}

/// DNS answers are small and few: two workers, whatever the node's size.
const DNS_WORKERS: usize = 2;

impl DnsServer {
    pub fn new(cfg: DnsConfig, metrics: DnsMetrics) -> Result<Self, NetnsError> {
        let rt = crate::netns::runtime_in(cfg.netns.as_deref(), "meshpath-dns", DNS_WORKERS)?;
        Ok(Self {
            rt: Some(rt),
            cfg,
            shared: Arc::new(Shared {
                table: RwLock::default(),
                metrics,
                relaying: forward::Relaying::default(),
            }),
            open: BTreeMap::new(),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime present until drop")
    }

    /// Swaps in the names of `model` and opens a listener for every resolver that has none.
    /// Returns what the maps should steer: only resolvers whose listener is open.
    pub fn update(&mut self, model: &ClusterModel, compiled: &Compiled) -> DnsSteering {
        let table = NameTable::build(model, compiled, &self.cfg.cluster_domain);
        debug!(names = table.len(), "DNS names updated");
        if let Ok(mut t) = self.shared.table.write() {
            *t = Arc::new(table);
        }
        let mut steering = DnsSteering::default();
        let ip = self.cfg.ip;
        for (resolver, upstreams) in self.resolvers(compiled) {
            match self.ensure_open(resolver) {
                Ok(listener) => {
                    if let Ok(mut u) = listener.upstreams.write() {
                        *u = upstreams;
                    }
                    steering
                        .by_resolver
                        .insert(resolver, SocketAddrV4::new(ip, listener.port));
                }
                Err(e) => {
                    warn!(error = %e, cause = ?std::error::Error::source(&e), "DNS queries to this resolver are not captured")
                }
            }
        }
        steering
    }

    /// Each resolver to capture, with where its unowned queries are relayed.
    fn resolvers(&self, compiled: &Compiled) -> BTreeMap<SocketAddrV4, Vec<SocketAddr>> {
        let mut out: BTreeMap<SocketAddrV4, Vec<SocketAddr>> = BTreeMap::new();
        let kube_dns = ObjectRef::new(KUBE_DNS.0, KUBE_DNS.1);
        let kube_dns_ips = compiled
            .frontends
            .iter()
            .filter(|(a, f)| f.service == kube_dns && a.port == 53)
            .map(|(a, _)| SocketAddrV4::new(a.ip, a.port));
        for resolver in self.cfg.upstreams.iter().copied().chain(kube_dns_ips) {
            // A resolver that is a Service's ClusterIP is relayed to its endpoints.
            let frontend = FrontendAddr {
                ip: *resolver.ip(),
                port: resolver.port(),
                protocol: Protocol::Udp,
            };
            let upstreams = match compiled.frontends.get(&frontend) {
                Some(fe) if !fe.backends.is_empty() => fe
                    .backends
                    .iter()
                    .map(|b| SocketAddr::new(b.ip.into(), b.port))
                    .collect(),
                _ => vec![resolver.into()],
            };
            out.insert(resolver, upstreams);
        }
        out
    }

    fn ensure_open(&mut self, resolver: SocketAddrV4) -> Result<&Listener, DnsError> {
        if !self.open.contains_key(&resolver) {
            let used: Vec<u16> = self.open.values().map(|l| l.port).collect();
            let (first, last) = self.cfg.ports;
            let port = (first..=last)
                .find(|p| !used.contains(p))
                .ok_or(DnsError::OutOfPorts {
                    resolver,
                    first,
                    last,
                })?;
            let listener = self.listen(resolver, port)?;
            info!(%resolver, dns_port = port, "DNS listener open");
            self.open.insert(resolver, listener);
        }
        Ok(&self.open[&resolver])
    }

    fn listen(&self, resolver: SocketAddrV4, port: u16) -> Result<Listener, DnsError> {
        let addr = SocketAddr::new(self.cfg.ip.into(), port);
        let err = |source| DnsError::Listen { resolver, source };
        let netns = self.cfg.netns.as_deref();
        let udp = bind_udp(netns, addr).map_err(err)?;
        let tcp = bind_tcp(netns, addr).map_err(err)?;
        let _in_rt = self.rt().enter();
        let tokio_err = |source| err(NetnsError::Bind { addr, source });
        udp.set_nonblocking(true).map_err(tokio_err)?;
        tcp.set_nonblocking(true).map_err(tokio_err)?;
        let udp = UdpSocket::from_std(udp).map_err(tokio_err)?;
        let tcp = TcpListener::from_std(tcp).map_err(tokio_err)?;
        let upstreams = Arc::new(RwLock::new(vec![SocketAddr::V4(resolver)]));
        let tasks = [
            self.rt().spawn(serve_udp(
                Arc::new(udp),
                Arc::clone(&self.shared),
                Arc::clone(&upstreams),
            )),
            self.rt().spawn(serve_tcp(
                tcp,
                Arc::clone(&self.shared),
                Arc::clone(&upstreams),
            )),
        ];
        Ok(Listener {
            port,
            upstreams,
            tasks,
        })
    }

    /// Closes the listeners of resolvers no longer steered (call after the maps were written).
    pub fn close_unused(&mut self, steering: &DnsSteering) {
        let stale: Vec<SocketAddrV4> = self
            .open
            .keys()
            .filter(|r| !steering.by_resolver.contains_key(r))
            .copied()
            .collect();
        for resolver in stale {
            if let Some(l) = self.open.remove(&resolver) {
                l.tasks.iter().for_each(JoinHandle::abort);
                info!(%resolver, dns_port = l.port, "DNS listener closed");
            }
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn upstreams_of(u: &RwLock<Vec<SocketAddr>>) -> Vec<SocketAddr> {
    u.read().map(|v| v.clone()).unwrap_or_default()
}

/// `name type` of a query's first question, for logs.
fn question(query: &[u8]) -> String {
    hickory_proto::op::Message::from_vec(query)
        .ok()
        .and_then(|m| {
            m.queries()
                .first()
                .map(|q| format!("{} {}", q.name(), q.query_type()))
        })
        .unwrap_or_default()
}

fn client_ip(peer: SocketAddr) -> Ipv4Addr {
    match peer.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

async fn serve_udp(
    sock: Arc<UdpSocket>,
    shared: Arc<Shared>,
    upstreams: Arc<RwLock<Vec<SocketAddr>>>,
) {
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(error) => {
                warn!(%error, "DNS UDP receive failed");
                shared.metrics.errors.inc();
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (sock, shared, upstreams) = (
            Arc::clone(&sock),
            Arc::clone(&shared),
            upstreams_of(&upstreams),
        );
        tokio::spawn(async move {
            if let Some(reply) = respond(&query, peer, &shared, &upstreams, false).await {
                if let Err(error) = sock.send_to(&reply, peer).await {
                    debug!(%error, %peer, "DNS UDP reply not sent");
                    shared.metrics.errors.inc();
                }
            }
        });
    }
}

async fn serve_tcp(
    listener: TcpListener,
    shared: Arc<Shared>,
    upstreams: Arc<RwLock<Vec<SocketAddr>>>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(r) => r,
            Err(error) => {
                warn!(%error, "DNS TCP accept failed");
                continue;
            }
        };
        let (shared, upstreams) = (Arc::clone(&shared), upstreams_of(&upstreams));
        tokio::spawn(serve_tcp_conn(stream, peer, shared, upstreams));
    }
}

/// Queries on one TCP connection, answered in order until the client closes it.
async fn serve_tcp_conn(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    upstreams: Vec<SocketAddr>,
) {
    loop {
        let query = match read_framed(&mut stream).await {
            Ok(Some(q)) => q,
            Ok(None) => return,
            Err(error) => {
                debug!(%error, %peer, "DNS TCP read failed");
                return;
            }
        };
        let Some(reply) = respond(&query, peer, &shared, &upstreams, true).await else {
            return;
        };
        if let Err(error) = write_framed(&mut stream, &reply).await {
            debug!(%error, %peer, "DNS TCP reply not sent");
            shared.metrics.errors.inc();
            return;
        }
    }
}

/// The reply to one query, counted; `None` when there is nothing to send.
async fn respond(
    query: &[u8],
    peer: SocketAddr,
    shared: &Shared,
    upstreams: &[SocketAddr],
    tcp: bool,
) -> Option<Vec<u8>> {
    let table = shared.table();
    let m = &shared.metrics;
    if shared.relaying.contains(peer) {
        // Our own relayed query, steered back: the agent runs inside the managed cgroups and the
        // resolver is not a Service (whose endpoints the agent relays to directly). Refuse
        // instead of relaying in a circle.
        warn!(%peer, "a relayed DNS query came back to the agent: it runs inside the managed cgroups; queries to this resolver cannot be relayed");
        m.errors.inc();
        return Some(answer::refused(query));
    }
    let reply = match answer::handle(query, &table, client_ip(peer), !tcp) {
        Action::Reply(bytes) => {
            m.answered.inc();
            tracing::trace!(%peer, question = %question(query), "DNS query answered");
            bytes
        }
        Action::Forward => match forward::forward(query, upstreams, tcp, &shared.relaying).await {
            Ok(bytes) => {
                m.forwarded.inc();
                bytes
            }
            Err(error) => {
                debug!(%error, %peer, question = %question(query), "DNS query not answered");
                m.errors.inc();
                return None;
            }
        },
        Action::Chase {
            reply,
            target,
            query_type,
        } => {
            m.answered.inc();
            let id = fastrand::u16(..);
            let chase = answer::chase_query(&target, query_type, id);
            let resolved = forward::forward(&chase, upstreams, tcp, &shared.relaying).await;
            if let Err(error) = &resolved {
                debug!(%error, %target, "ExternalName target not resolved");
            }
            let done = answer::finish_chase(*reply, resolved.ok().as_deref());
            let request = hickory_proto::op::Message::from_vec(query).ok()?;
            match answer::encode(&done, &request, !tcp) {
                Action::Reply(bytes) => bytes,
                _ => {
                    m.errors.inc();
                    return None;
                }
            }
        }
        Action::Drop => {
            m.errors.inc();
            return None;
        }
    };
    if answer::rcode(&reply) == Some(ResponseCode::NXDomain) {
        m.nxdomain.inc();
    }
    Some(reply)
}
