//! `meshpath agent`: source → compile → apply, again on every change, until SIGINT/SIGTERM.
//! The programs stay attached after the agent exits (their links are pinned): traffic keeps
//! flowing through a restart, as with kube-proxy's rules. `meshpath cleanup` removes them, and so
//! does an agent stopped because its DaemonSet is deleted (`--uninstall-cleanup`).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{info, warn};

use meshpath_datapath::{Datapath, DatapathError, EMBEDDED_OBJECT};
use meshpath_model::l7::L7Config;
use meshpath_model::ClusterModel;
use meshpath_proxy::{Proxy, ProxyOptions};
use meshpath_source::kube::{lifecycle, KubeSource, KubeSourceError};
use meshpath_source::{ManifestWatcher, SourceError, SourceStatus};

use crate::config::{AgentConfig, SourceConfig};
use crate::proxy_listeners::ProxyListeners;
use crate::reconcile::{ProxySetup, Reconciler};

/// Kept alive while the agent runs; dropping it stops the source.
enum RunningSource {
    Manifests(#[allow(dead_code)] ManifestWatcher),
    Kube(#[allow(dead_code)] KubeSource),
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "this meshpath binary was built without the eBPF object: run `cargo xtask build-ebpf` and \
         rebuild, or pass --bpf-object PATH"
    )]
    NoObject,
    #[error("reading the eBPF object {}", path.display())]
    ReadObject {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Kube(#[from] KubeSourceError),
    #[error(transparent)]
    Proxy(#[from] crate::netns::NetnsError),
    #[error("moving the agent into cgroup {}", path.display())]
    JoinCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--cgroup auto")]
    CgroupLayout(#[from] crate::cgroup_layout::LayoutError),
    #[error("installing the signal handler")]
    Signal(#[source] std::io::Error),
    #[error("--trace-collector {url}")]
    TraceCollectorUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("--trace-collector")]
    TraceExport(#[from] meshpath_proxy::export::ExportError),
}

pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let owned;
    let object: &[u8] = match &cfg.bpf_object {
        Some(path) => {
            owned = std::fs::read(path).map_err(|source| AgentError::ReadObject {
                path: path.clone(),
                source,
            })?;
            &owned
        }
        None => EMBEDDED_OBJECT.ok_or(AgentError::NoObject)?,
    };
    if let Some(cgroup) = &cfg.agent_cgroup {
        join_cgroup(cgroup).map_err(|e| *e)?;
    }
    let cgroup = attach_cgroup(&cfg)?;
    meshpath_datapath::batch::set_enabled(cfg.map_batch_writes);
    let sync = meshpath_source::sync_metrics::SyncMetrics::default();
    let (model_tx, mut model_rx) = watch::channel(Arc::new(ClusterModel::default()));
    let (status_tx, _status_rx) = watch::channel(Arc::new(SourceStatus::default()));
    // Before the source: the uninstall that may stop this agent is seen from the start.
    let lifecycle = start_lifecycle(&cfg).await;
    // The Kubernetes list runs while the programs load (the kernel verifier's work on this
    // thread, the list's on the runtime's other): at 10 000 Services each takes about half a
    // second. Nothing is programmed before both are done.
    let mut model_tx = Some(model_tx);
    let mut status_tx = Some(status_tx);
    let mut kube_source = match &cfg.source {
        SourceConfig::Kube(options) => Some(
            KubeSource::start(
                options,
                model_tx.take().expect("model sender"),
                status_tx.take().expect("status sender"),
                sync.clone(),
            )
            .await?,
        ),
        SourceConfig::Manifests(_) => None,
    };
    let mut datapath = Datapath::load(object, &cfg.pin_dir, &cgroup, cfg.features)?;
    // Loading parsed the kernel's BTF (freed now, resident until trimmed).
    crate::heap::release_free();
    info!(pin_dir = %cfg.pin_dir.display(), cgroup = %cgroup.display(), features = ?cfg.features, "datapath loaded");
    if let Some(log) = datapath.take_log() {
        if let Err(error) = crate::bpf_log::spawn(log) {
            warn!(%error, "eBPF log not forwarded");
        }
    }
    if let Some(sampler) = datapath.take_tcp_sampler() {
        let every = std::time::Duration::from_millis(cfg.features.tcp_metrics_sample_ms.into());
        if let Err(error) = crate::tcp_sample::spawn(sampler, cgroup.clone(), every) {
            warn!(%error, "live TCP connections not sampled: they report at close only");
        }
    }

    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let (l7_tx, l7_rx) = watch::channel(Arc::new(L7Config::default()));
    let mut proxy_stats = None;
    let mut istio = None;
    let mut ejected = None;
    let proxy = match &cfg.proxy {
        Some(p) => Some(ProxySetup {
            ip: p.ip,
            ports: p.ports,
            http_no_endpoint_503: p.http_no_endpoint_503,
            fail_closed: p.fail_closed.clone(),
            listeners: {
                let proxy = Proxy::with_options(
                    l7_rx.clone(),
                    ProxyOptions {
                        trace_sampling: f64::from(cfg.trace.sampling_hundredths) / 100.0,
                        own_http1: p.own_http1,
                        ..ProxyOptions::default()
                    },
                    span_exporter(&cfg, p.ip)?,
                );
                proxy_stats = Some(proxy.stats());
                istio = Some(proxy.istio_metrics());
                ejected = Some(proxy.ejected_endpoints());
                let socks =
                    meshpath_datapath::proxy_socks::ProxySockets::open_pinned(&cfg.pin_dir)?;
                ProxyListeners::new(
                    p.ip,
                    p.netns.clone(),
                    proxy,
                    socks,
                    cfg.worker_threads.unwrap_or(2),
                )?
            },
        }),
        None => None,
    };
    let dns_metrics = crate::dns::DnsMetrics::default();
    let conn_reset_metrics = crate::conn_reset::ConnResetMetrics::default();
    let dns = start_dns(&cfg, &dns_metrics)?;
    let programmed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tcp_metrics = if cfg.features.tcp_metrics {
        match meshpath_datapath::tcp_metrics::TcpMetricsReader::open_pinned(&cfg.pin_dir) {
            Ok(reader) => Some(Arc::new(crate::tcp_metrics::KernelTcpMetrics::new(
                reader,
                model_rx.clone(),
            ))),
            Err(error) => {
                warn!(%error, "kernel TCP metrics not exported");
                None
            }
        }
    } else {
        None
    };
    let mut admin = crate::admin::AdminState::new(crate::admin::Sources {
        tcp_metrics,
        sync: sync.clone(),
        proxy: proxy_stats,
        istio,
        pin_dir: cfg.pin_dir.clone(),
        dns: dns_metrics,
        conn_resets: conn_reset_metrics.clone(),
    });
    admin.programmed = programmed.clone();
    // `meshpath recompile`: the admin listener asks the loop below, which owns the maps.
    let (recompile_tx, mut recompile_rx) = tokio::sync::mpsc::channel(1);
    admin.recompile = Some(recompile_tx);
    // Not fatal: traffic matters more than stats, and several agents (tests, a restart
    // overlapping the old process) may contend for the default port.
    if let Err(e) = crate::admin::start(cfg.admin_addr, admin).await {
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        warn!(error = %e, cause = cause.as_deref().unwrap_or(""), "admin listener not started");
    }
    // After the admin listener: its probes answer while the first list is awaited.
    let _source = match &cfg.source {
        SourceConfig::Manifests(dir) => {
            let watcher = ManifestWatcher::start(
                dir,
                model_tx.take().expect("model sender"),
                status_tx.take().expect("status sender"),
            )?;
            info!(dir = %dir.display(), "watching manifests");
            RunningSource::Manifests(watcher)
        }
        SourceConfig::Kube(_) => {
            let source = kube_source
                .take()
                .expect("started before the datapath loaded");
            // Until every kind is listed, what is pinned (from a previous run) stays as is: an
            // empty or partial model would flush it.
            info!("waiting for the first complete list from the Kubernetes API");
            let signalled = tokio::select! {
                changed = model_rx.changed() => {
                    if changed.is_err() {
                        warn!("Kubernetes source stopped");
                        return Ok(());
                    }
                    false
                },
                _ = term.recv() => { info!("SIGTERM: exiting"); true }
                _ = int.recv() => { info!("SIGINT: exiting"); true }
            };
            if signalled {
                return remove_if_uninstalled(lifecycle, datapath, &cfg.pin_dir).await;
            }
            RunningSource::Kube(source)
        }
    };
    let opt_in = cfg.features.socket_redirect == meshpath_datapath::RedirectScope::OptIn;
    if opt_in {
        own_cgroup_redirected(&cfg, &mut datapath);
        let proxy = cfg.proxy.as_ref().map(|p| (p.ip, p.ports));
        if let Err(error) = meshpath_datapath::redirect_scope::set_proxy_range(&cfg.pin_dir, proxy)
        {
            warn!(%error, "the proxy's accepted sockets are not redirected");
        }
    }
    let mut reconciler = Reconciler::new(
        cfg.compile.clone(),
        cfg.features.connection_limits,
        proxy,
        l7_tx,
    )
    .with_dns(dns)
    .with_tc(cfg.tc_uplink.as_ref().map(|_| crate::tc_path::TcPath {
        node_name: cfg.node_name.clone(),
    }))
    .with_redirect_opt_in(opt_in)
    .with_conn_reset(cfg.reset_connections.then(|| {
        let proxy_netns = cfg.proxy.as_ref().and_then(|p| p.netns.as_deref());
        crate::conn_reset::ConnResetter::new(&cgroup, proxy_netns, conn_reset_metrics)
    }));
    let mut coverage = crate::coverage::Reporter::default();
    // A hash of the pods the coverage was last looked up for: the lookup stats cgroup
    // directories, so it runs only when the pods changed, not on every endpoint change.
    let mut covered_for: Option<u64> = None;
    // The snapshot the coverage was last checked at: when the source says no pod changed
    // since, not even the hash (a pass over every pod) is needed.
    let mut covered_at: Option<u64> = None;
    // The tc path attaches once, after the first reconcile filled its maps.
    let mut tc_attached = false;
    let mut _tc_links = None;
    let mut signalled = false;
    let mut first_pass = true;
    // The pod veths' programs read the ClusterIP frontends: started after the first reconcile.
    let mut veth_started = false;
    // The tc conntrack sweeper (closed flows, and the slots of vanished counted flows): one,
    // started by whichever of the uplink and the veth path comes up.
    let mut sweeper_started = false;
    loop {
        let model = model_rx.borrow_and_update().clone();
        if let Some(rx) = ejected.as_mut() {
            reconciler.set_ejected(rx.borrow_and_update().clone());
        }
        let pass_started = std::time::Instant::now();
        reconciler.reconcile(&model, &mut datapath.maps);
        let pass = pass_started.elapsed();
        if first_pass {
            // The first pass compiled everything, with its intermediate state freed now.
            first_pass = false;
            crate::heap::release_free();
        }
        // Attached only now, over maps that hold the model: after an upgrade that replaced a map
        // (another definition), the previous programs keep serving from the old maps until here.
        datapath.attach()?;
        if !tc_attached {
            tc_attached = true;
            // Not fatal: the socket path serves the pods whatever happens on the uplink.
            match datapath.attach_uplink(cfg.tc_uplink.as_ref(), &cfg.pin_dir) {
                Ok(mut links) => {
                    if let Some(attached) = links.as_mut() {
                        sweeper_started = true;
                        crate::tc_path::spawn_sweeper(
                            cfg.pin_dir.clone(),
                            attached.releaser.take(),
                        );
                    }
                    _tc_links = links
                }
                Err(error) => {
                    warn!(%error, source = ?std::error::Error::source(&error), "tc path not attached: NodePorts and external IPs are not served")
                }
            }
        }
        if !veth_started {
            veth_started = true;
            start_veth_path(&cfg, &mut datapath, &cgroup, !sweeper_started);
        }
        programmed.store(true, std::sync::atomic::Ordering::Relaxed);
        let pods_may_have_changed = match (&model.changes, covered_at) {
            (Some(changes), Some(seq)) => changes
                .since(seq)
                .is_none_or(|set| set.everything || !set.pods.is_empty()),
            _ => true,
        };
        if let (SourceConfig::Kube(_), Some(node), true) =
            (&cfg.source, &cfg.node_name, pods_may_have_changed)
        {
            covered_at = model.changes.as_ref().map(|c| c.seq);
            let pods_hash = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                model.pods.hash(&mut h);
                h.finish()
            };
            if covered_for != Some(pods_hash) {
                covered_for = Some(pods_hash);
                let now = crate::coverage::local_pods(&model, node, &cfg.cgroup_mount, &cgroup);
                coverage.report(now, &cgroup);
            }
        }
        if let Some(received) = model.received {
            // Change seen by the source → maps (and proxy routes) written.
            let latency = received.elapsed();
            sync.change_to_programmed.observe(latency.as_secs_f64());
            // The pass's share of it; the rest is the source's coalescing, its wait for the
            // previous pass to let go of the snapshot, and this loop's wake-up.
            tracing::debug!(
                latency_us = latency.as_micros() as u64,
                pass_us = pass.as_micros() as u64,
                "change programmed"
            );
        }
        // Not held while waiting: the source edits the snapshot in place when no one else
        // holds it, and copies the whole model when someone does.
        drop(model);
        tokio::select! {
            changed = model_rx.changed() => if changed.is_err() {
                warn!("source stopped");
                break;
            },
            // Outlier-detection ejections also leave the kernel's selection.
            _ = ejections_changed(&mut ejected) => {}
            Some(reply) = recompile_rx.recv() => {
                let model = model_rx.borrow_and_update().clone();
                let report = reconciler.recompile(&model, &mut datapath.maps);
                let _ = reply.send(report);
            }
            _ = term.recv() => { info!("SIGTERM: draining, then exiting"); signalled = true; break; }
            _ = int.recv() => { info!("SIGINT: draining, then exiting"); signalled = true; break; }
        }
    }
    if let (Some(listeners), Some(p)) = (reconciler.proxy_listeners(), &cfg.proxy) {
        listeners.drain(p.drain_timeout).await;
    }
    if !signalled {
        return Ok(());
    }
    drop(reconciler);
    drop(_tc_links);
    remove_if_uninstalled(lifecycle, datapath, &cfg.pin_dir).await
}

/// Follows the agent's DaemonSet when `--uninstall-cleanup` applies. Not fatal: without it the
/// pins stay when the agent stops, as they always did.
async fn start_lifecycle(cfg: &AgentConfig) -> Option<lifecycle::Lifecycle> {
    let (SourceConfig::Kube(options), Some(pod)) = (&cfg.source, &cfg.uninstall_cleanup) else {
        return None;
    };
    match lifecycle::Lifecycle::start(options, pod.clone()).await {
        Ok(l) => Some(l),
        Err(error) => {
            warn!(%error, "the agent's DaemonSet is not followed: its pins stay when it stops");
            None
        }
    }
}

/// At a stop by signal: the programs stay attached for the next agent (a rolling update, a
/// restarted pod), unless the agent's DaemonSet or namespace is being deleted, when they are
/// detached and the pins removed, as `meshpath cleanup` does.
async fn remove_if_uninstalled(
    lifecycle: Option<lifecycle::Lifecycle>,
    datapath: Datapath,
    pin_dir: &std::path::Path,
) -> Result<(), AgentError> {
    let Some(lifecycle) = lifecycle else {
        info!("programs stay attached");
        return Ok(());
    };
    match lifecycle.fate(STOP_READ_TIMEOUT).await {
        lifecycle::Fate::Uninstalled => {
            // Its link and map handles first, so that unpinning releases the last reference.
            drop(datapath);
            meshpath_datapath::cleanup(pin_dir)?;
            info!(pin_dir = %pin_dir.display(), "uninstalled: programs detached, pins removed");
        }
        lifecycle::Fate::Replaced => {
            info!("the DaemonSet stays: programs stay attached for the next agent")
        }
        lifecycle::Fate::Unknown => warn!(
            "the DaemonSet's fate is unknown: programs stay attached (`meshpath cleanup` removes them)"
        ),
    }
    Ok(())
}

/// How long each read of the DaemonSet and the namespace may take at a stop; the kubelet's
/// grace period (30 s in deploy/) also covers the proxy's drain.
const STOP_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The pod-veth tc path when switched on, else whatever a previous agent pinned is detached.
/// Not fatal: the socket path serves the pods whatever happens on their veths.
/// `sweeper`: no uplink started the tc conntrack sweeper, so this path does (its counted flows
/// share the uplink's record, whose vanished entries only the sweeper releases).
fn start_veth_path(
    cfg: &AgentConfig,
    datapath: &mut Datapath,
    cgroup: &std::path::Path,
    sweeper: bool,
) {
    let Some(veth) = &cfg.tc_veth else {
        if let Err(error) = meshpath_datapath::tc_veth::detach_all(&cfg.pin_dir) {
            warn!(%error, "pod veth links of a previous agent not detached");
        }
        return;
    };
    if sweeper {
        let releaser = match datapath.tc_releaser() {
            Ok(r) => Some(r),
            Err(error) => {
                warn!(%error, source = ?std::error::Error::source(&error), "no release program: the slots of veth flows the conntrack evicts are not given back");
                None
            }
        };
        crate::tc_path::spawn_sweeper(cfg.pin_dir.clone(), releaser);
    }
    let path = match datapath.take_veth_path(&cfg.pin_dir) {
        Ok(path) => path,
        Err(error) => {
            warn!(%error, source = ?std::error::Error::source(&error), "pod veth path not started: ClusterIPs from outside the managed cgroups are not served");
            return;
        }
    };
    if let Err(error) = crate::tc_veth::spawn(path, veth, cgroup.to_path_buf()) {
        warn!(%error, source = ?std::error::Error::source(&error), "pod veth path not started: ClusterIPs from outside the managed cgroups are not served");
    }
}

/// Resolves when the proxy's ejected set changes; never without a proxy (or once it is gone).
async fn ejections_changed(rx: &mut Option<watch::Receiver<meshpath_proxy::EjectedSet>>) {
    if let Some(r) = rx {
        if r.changed().await.is_ok() {
            return;
        }
        // The proxy is gone: stop watching, or this would resolve at once forever.
        *rx = None;
    }
    std::future::pending::<()>().await
}

/// The DNS proxy when capture is on, its resolvers defaulting to the agent's /etc/resolv.conf.
fn start_dns(
    cfg: &AgentConfig,
    metrics: &crate::dns::DnsMetrics,
) -> Result<Option<crate::dns::DnsServer>, crate::netns::NetnsError> {
    if cfg.dns_without_proxy {
        warn!(
            "--dns-capture needs --proxy-ip (the address pods reach the agent at): DNS capture off"
        );
    }
    let Some(mut dns) = cfg.dns.clone() else {
        info!("DNS capture off");
        return Ok(None);
    };
    if dns.upstreams.is_empty() {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        dns.upstreams = crate::dns::nameservers(&conf);
    }
    info!(upstreams = ?dns.upstreams, cluster_domain = %dns.cluster_domain, "DNS capture on");
    crate::dns::DnsServer::new(dns, metrics.clone()).map(Some)
}

/// `--cgroup`, with `auto` resolved to the kubelet's kubepods root.
fn attach_cgroup(cfg: &AgentConfig) -> Result<PathBuf, crate::cgroup_layout::LayoutError> {
    if cfg.cgroup != std::path::Path::new(crate::config::CGROUP_AUTO) {
        return Ok(cfg.cgroup.clone());
    }
    let root = crate::cgroup_layout::detect(&cfg.cgroup_mount)?;
    info!(cgroup = %root.path.display(), driver = ?root.driver, "kubelet's kubepods cgroup found");
    Ok(root.path)
}

/// Moves this whole process (all its threads) into `cgroup` (cgroup v2: writing "0" to
/// `cgroup.procs` moves the writer's process), creating the directory if needed.
/// The proxy's span exporter when `--trace-collector` is set. Its task runs on the agent's
/// runtime, away from the proxy's.
fn span_exporter(
    cfg: &AgentConfig,
    proxy_ip: std::net::Ipv4Addr,
) -> Result<Option<Arc<dyn meshpath_proxy::SpanExporter>>, AgentError> {
    use meshpath_proxy::export::{ExportOptions, Exporter, Format, TraceMeta};
    let Some(url) = &cfg.trace.collector else {
        return Ok(None);
    };
    let collector = url
        .parse::<http::Uri>()
        .map_err(|source| AgentError::TraceCollectorUrl {
            url: url.clone(),
            source,
        })?;
    let node = cfg.node_name.as_deref().unwrap_or("node");
    let exporter = Exporter::start(ExportOptions {
        collector,
        format: match cfg.trace.format {
            crate::config::TraceFormatArg::Zipkin => Format::Zipkin,
            crate::config::TraceFormatArg::Otlp => Format::Otlp,
        },
        meta: TraceMeta {
            // Envoy's `<type>~<ip>~<id>~<domain>`, with meshpath's node proxy as the type.
            node_id: format!("meshpath~{proxy_ip}~{node}~cluster.local"),
            mesh_id: cfg.trace.mesh_id.clone(),
            fallback_service: format!("meshpath-proxy.{node}"),
        },
        queue: 4096,
        batch: 256,
        flush: std::time::Duration::from_millis(200),
    })?;
    tracing::info!(collector = %url, format = ?cfg.trace.format, "exporting proxy spans");
    Ok(Some(exporter))
}

/// The inode number of a cgroup v2 hierarchy's root directory.
const ROOT_CGROUP_INO: u64 = 1;

/// In the opt-in scope the node proxy's connections to backends are redirected too: connect4
/// recognises them by the agent's cgroup id (the inode number of its cgroup v2 directory).
/// Without it they take the TCP path, which is safe; hence a warning, not a failure.
fn own_cgroup_redirected(cfg: &AgentConfig, datapath: &mut Datapath) {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = own_cgroup_dir(cfg) else {
        warn!("own cgroup v2 directory not found: the proxy's upstream sockets are not redirected");
        return;
    };
    let id = match std::fs::metadata(&dir) {
        Ok(m) => m.ino(),
        Err(error) => {
            warn!(%error, cgroup = %dir.display(), "own cgroup unreadable: the proxy's upstream sockets are not redirected");
            return;
        }
    };
    // The root cgroup holds every host process not placed elsewhere: naming it would opt the
    // whole host's connects into redirection, not just the proxy's.
    if id == ROOT_CGROUP_INO {
        warn!(cgroup = %dir.display(), "the agent runs in the root cgroup: the proxy's upstream sockets are not redirected (run it in a cgroup of its own, as the DaemonSet does)");
        if let Err(error) =
            meshpath_datapath::redirect_scope::set_own_cgroup(&mut datapath.maps, None)
        {
            warn!(%error, "a previous agent's cgroup stays in the redirect scope");
        }
        return;
    }
    match meshpath_datapath::redirect_scope::set_own_cgroup(&mut datapath.maps, Some(id)) {
        Ok(()) => {
            info!(cgroup = %dir.display(), id, "the proxy's connects are redirected in the opt-in scope")
        }
        Err(error) => warn!(%error, "the proxy's upstream sockets are not redirected"),
    }
}

/// `--agent-cgroup` when given (the agent moved itself there); else the path of
/// /proc/self/cgroup under a cgroup v2 mount (`--cgroup-mount`, or any in /proc/self/mounts:
/// hybrid hosts mount it at /sys/fs/cgroup/unified).
fn own_cgroup_dir(cfg: &AgentConfig) -> Option<PathBuf> {
    if let Some(dir) = &cfg.agent_cgroup {
        return Some(dir.clone());
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim()
        .trim_start_matches('/')
        .to_owned();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let v2_mounts = mounts.lines().filter_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(at))
    });
    std::iter::once(cfg.cgroup_mount.clone())
        .chain(v2_mounts)
        .map(|m| m.join(&rel))
        .find(|d| d.join("cgroup.procs").exists())
}

fn join_cgroup(cgroup: &std::path::Path) -> Result<(), Box<AgentError>> {
    let err = |source| AgentError::JoinCgroup {
        path: cgroup.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(cgroup).map_err(err)?;
    std::fs::write(cgroup.join("cgroup.procs"), b"0").map_err(err)?;
    info!(cgroup = %cgroup.display(), "agent moved into cgroup");
    Ok(())
}
