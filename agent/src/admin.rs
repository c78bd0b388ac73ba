//! The agent's admin HTTP listener, modelled on Envoy's admin interface so Istio's tooling
//! habits carry over: `/stats` (Envoy's text form, `cluster.<name>.<stat>: <value>`, plus
//! kernel counters under `meshpath.`), `/metrics` (Prometheus text), `/ready` (readiness: `LIVE`
//! once the first snapshot of the cluster is programmed, 503 `PRE_INITIALIZING` before, as
//! Envoy answers) and `/healthz` (liveness: the agent's runtime answers).
//! `/ui` serves the live service graph (see [`crate::ui`]). `meshpath stats` reads `/stats`
//! and `meshpath top` `/ui/graph.json`, both through [`fetch`].

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use meshpath_proxy::ProxyStats;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("binding the admin listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("fetching http://{addr}{path}")]
    Fetch {
        addr: SocketAddr,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("http://{addr}{path} answered {status}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: String,
    },
}

/// What the admin endpoints report.
#[derive(Clone)]
pub struct AdminState {
    /// The node proxy's cluster stats, when the proxy runs.
    pub proxy: Option<ProxyStats>,
    /// The node proxy's Istio standard metrics (live families, not copies).
    pub istio: Option<meshpath_proxy::istio_metrics::IstioMetrics>,
    /// bpffs directory of the pinned maps, for the kernel counters.
    pub pin_dir: PathBuf,
    /// The sync loop's counters and latency histogram.
    pub sync: meshpath_source::sync_metrics::SyncMetrics,
    /// Set once the first snapshot of the cluster is programmed.
    pub programmed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The DNS proxy's counters (zero while capture is off).
    pub dns: crate::dns::DnsMetrics,
    /// The pinned maps for `/stats`, opened at the first request and kept (opening every map
    /// per request costs syscalls per map).
    pub kernel_maps: std::sync::Arc<std::sync::Mutex<Option<meshpath_datapath::DatapathMaps>>>,
    /// Istio's TCP metrics from the kernel (`--tcp-metrics`), when the datapath has them.
    pub tcp_metrics: Option<std::sync::Arc<crate::tcp_metrics::KernelTcpMetrics>>,
    /// Recent samples of the Istio metrics, for the graph's rates.
    pub graph: crate::ui::SharedHistory,
}

/// Binds `addr` and serves until the task is dropped.
pub async fn start(addr: SocketAddr, state: AdminState) -> Result<(), AdminError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    info!(%addr, "admin listener ready");
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(error) => {
                    warn!(%error, "admin accept failed");
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&req, &state).await) }
                });
                if let Err(error) = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    debug!(%peer, %error, "admin connection ended with an error");
                }
            });
        }
    });
    Ok(())
}

async fn handle(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let (ctype, body) = match req.uri().path() {
        p if p == "/ui" || p.starts_with("/ui/") => {
            match crate::ui::serve(p, req.uri().query(), state).await {
                Some(page) => page,
                None => return not_found(),
            }
        }
        "/ready" if state.programmed.load(std::sync::atomic::Ordering::Relaxed) => {
            ("text/plain", "LIVE\n".to_owned())
        }
        // Still waiting for the first complete list (e.g. the API server is unreachable): not
        // ready, but alive; what is pinned keeps serving meanwhile.
        "/ready" => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"PRE_INITIALIZING\n")));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return r;
        }
        "/healthz" => ("text/plain", "ok\n".to_owned()),
        "/stats" => ("text/plain", envoy_stats(state).await),
        "/metrics" => (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics(state),
        ),
        _ => return not_found(),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

fn not_found() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

async fn envoy_stats(state: &AdminState) -> String {
    let mut out = state
        .proxy
        .as_ref()
        .map(ProxyStats::envoy_text)
        .unwrap_or_default();
    // Map reads are syscalls: off the async workers.
    let pin_dir = state.pin_dir.clone();
    let maps = state.kernel_maps.clone();
    let kernel = tokio::task::spawn_blocking(move || kernel_stats(&pin_dir, &maps))
        .await
        .unwrap_or_default();
    out.push_str(&kernel);
    out
}

/// Kernel-side counters from the pinned maps (empty when they cannot be read).
fn kernel_stats(
    pin_dir: &std::path::Path,
    maps: &std::sync::Mutex<Option<meshpath_datapath::DatapathMaps>>,
) -> String {
    let Ok(mut maps) = maps.lock() else {
        return String::new();
    };
    if maps.is_none() {
        match meshpath_datapath::DatapathMaps::open_pinned(pin_dir) {
            Ok(m) => *maps = Some(m),
            Err(error) => {
                debug!(pin_dir = %pin_dir.display(), %error, "no kernel stats");
                return String::new();
            }
        }
    }
    let status = match maps
        .as_ref()
        .map(|m| meshpath_datapath::status::from_maps(m, pin_dir))
    {
        Some(Ok(s)) => s,
        None => return String::new(),
        Some(Err(error)) => {
            debug!(pin_dir = %pin_dir.display(), %error, "no kernel stats");
            return String::new();
        }
    };
    let mut out = String::new();
    for (name, v) in &status.counters {
        let _ = writeln!(out, "meshpath.{name}: {v}");
    }
    for s in &status.services {
        let svc = format!("meshpath.service.{}|{}", s.name, s.frontend);
        for (stat, v) in [
            ("connects", s.connects),
            ("no_backend", s.no_backend),
            ("active_connections", s.active_connections),
            ("conn_limit_refused", s.conn_limit_refused),
        ] {
            let _ = writeln!(out, "{svc}.{stat}: {v}");
        }
    }
    // Per-subset kernel limits, under Istio's cluster name as the proxy's stats are.
    for g in &status.limit_groups {
        let group = format!("meshpath.limit_group.{}", g.name);
        for (stat, v) in [
            ("max_connections", u64::from(g.max_connections)),
            ("active_connections", g.active_connections),
            ("conn_limit_refused", g.refused),
        ] {
            let _ = writeln!(out, "{group}.{stat}: {v}");
        }
    }
    out
}

/// Prometheus text: one family per Envoy stat, labelled by cluster (Istio's
/// `envoy_cluster_<stat>{cluster_name=...}`) or, for the router's, by connection manager
/// (`envoy_http_<stat>{http_conn_manager_prefix=...}`).
fn metrics(state: &AdminState) -> String {
    type Labels = Vec<(String, String)>;
    let mut registry = Registry::default();
    let mut counters: std::collections::BTreeMap<String, Family<Labels, Counter>> =
        Default::default();
    let mut gauges: std::collections::BTreeMap<String, Family<Labels, Gauge<u64, AtomicU64>>> =
        Default::default();
    for (cluster, stat, v, is_counter) in state.proxy.iter().flat_map(ProxyStats::values) {
        // The encoder appends `_total` to counters: strip Envoy's own so it is not doubled.
        let stat = if is_counter {
            stat.strip_suffix("_total").unwrap_or(stat)
        } else {
            stat
        };
        let name = format!("envoy_cluster_{}", stat.replace('.', "_"));
        let labels = vec![("cluster_name".to_owned(), cluster)];
        if is_counter {
            counters
                .entry(name)
                .or_default()
                .get_or_create(&labels)
                .inc_by(v);
        } else {
            gauges
                .entry(name)
                .or_default()
                .get_or_create(&labels)
                .set(v);
        }
    }
    // Router stats (`http.<prefix>.<stat>`), tagged as Istio's stats config does.
    for (prefix, stat, v) in state.proxy.iter().flat_map(ProxyStats::router_values) {
        let labels = vec![("http_conn_manager_prefix".to_owned(), prefix)];
        counters
            .entry(format!("envoy_http_{stat}"))
            .or_default()
            .get_or_create(&labels)
            .inc_by(v);
    }
    for (name, f) in counters {
        registry.register(name.clone(), name, f);
    }
    for (name, f) in gauges {
        registry.register(name.clone(), name, f);
    }
    state.sync.register(&mut registry);
    state.dns.register(&mut registry);
    if let Some(m) = &state.istio {
        m.register(&mut registry);
    }
    if let Some(tcp) = &state.tcp_metrics {
        tcp.register(&mut registry);
    }
    let mut out = String::new();
    if let Err(error) = encode(&mut out, &registry) {
        warn!(%error, "encoding metrics");
    }
    out
}

/// `GET path` (e.g. `/stats`) from a running agent's admin listener: the body of a 200 answer.
/// Plain HTTP/1.0, so no client stack is needed.
pub async fn fetch(addr: SocketAddr, path: &str) -> Result<String, AdminError> {
    let io = |source| AdminError::Fetch {
        addr,
        path: path.to_owned(),
        source,
    };
    let mut s = TcpStream::connect(addr).await.map_err(io)?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: meshpath\r\n\r\n");
    s.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(AdminError::Status {
            addr,
            path: path.to_owned(),
            status: status.to_owned(),
        });
    }
    Ok(body.to_owned())
}

/// The lines of `stats` containing `filter` (all without one).
pub fn filter_lines(stats: &str, filter: Option<&str>) -> String {
    stats
        .lines()
        .filter(|l| filter.is_none_or(|f| l.contains(f)))
        .fold(String::new(), |mut out, l| {
            out.push_str(l);
            out.push('\n');
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_ready_stats_and_metrics() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let state = AdminState {
            proxy: None,
            istio: None,
            pin_dir: PathBuf::from("/nonexistent/meshpath-admin-test"),
            programmed: Default::default(),
            sync: Default::default(),
            dns: Default::default(),
            tcp_metrics: None,
            kernel_maps: Default::default(),
            graph: Default::default(),
        };
        let programmed = state.programmed.clone();
        start(addr, state).await.unwrap();
        // No proxy, no pinned maps: an empty (but successful) report.
        assert_eq!(fetch(addr, "/stats").await.unwrap(), "");
        let early = raw_get(addr, "/ready").await;
        assert!(
            early.starts_with("HTTP/1.0 503") && early.ends_with("PRE_INITIALIZING\n"),
            "{early}"
        );
        assert!(raw_get(addr, "/healthz").await.starts_with("HTTP/1.0 200"));
        programmed.store(true, std::sync::atomic::Ordering::Relaxed);
        let ready = raw_get(addr, "/ready").await;
        assert!(
            ready.starts_with("HTTP/1.0 200") && ready.ends_with("LIVE\n"),
            "{ready}"
        );
        let page = raw_get(addr, "/ui").await;
        assert!(
            page.starts_with("HTTP/1.0 200") && page.contains("<svg"),
            "{page}"
        );
        assert!(raw_get(addr, "/ui/graph.js")
            .await
            .contains("function draw"));
        assert!(raw_get(addr, "/ui/nope").await.starts_with("HTTP/1.0 404"));
        // No proxy, no kernel metrics: an empty graph, with a rate window from the second poll.
        let first = fetch(addr, "/ui/graph.json").await.unwrap();
        assert_eq!(first, r#"{"window_s":null,"nodes":[],"edges":[]}"#);
        let second: serde_json::Value =
            serde_json::from_str(&fetch(addr, "/ui/graph.json?window=5").await.unwrap()).unwrap();
        assert!(
            second["window_s"].as_f64().is_some_and(|w| w > 0.0),
            "{second}"
        );
        let metrics = raw_get(addr, "/metrics").await;
        assert!(metrics.ends_with("# EOF\n"), "{metrics}");
        assert!(raw_get(addr, "/nope").await.starts_with("HTTP/1.0 404"));
    }

    async fn raw_get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn metrics_name_clusters_like_istio() {
        use meshpath_model::l7::{Cluster, ClusterKey, L7Config};
        let key = ClusterKey {
            service: meshpath_model::ObjectRef::new("default", "web"),
            port: 8080,
            subset: Some("v1".into()),
        };
        let cfg = L7Config {
            clusters: [(
                key,
                Cluster {
                    endpoints: vec![],
                    policy: Default::default(),
                },
            )]
            .into_iter()
            .collect(),
            ..L7Config::default()
        };
        let (_tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(cfg));
        let proxy = meshpath_proxy::Proxy::new(rx);
        let state = AdminState {
            proxy: Some(proxy.stats()),
            istio: Some(proxy.istio_metrics()),
            pin_dir: PathBuf::from("/nonexistent"),
            programmed: Default::default(),
            sync: Default::default(),
            dns: Default::default(),
            tcp_metrics: None,
            kernel_maps: Default::default(),
            graph: Default::default(),
        };
        let text = metrics(&state);
        let label = r#"{cluster_name="outbound|8080|v1|web.default.svc.cluster.local"}"#;
        for line in [
            format!("envoy_cluster_upstream_rq_total{label} 0"),
            format!("envoy_cluster_upstream_rq_pending_overflow_total{label} 0"),
            format!("envoy_cluster_circuit_breakers_default_remaining_pending{label} 4294967295"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
    }

    #[test]
    fn filters_lines() {
        let s = "cluster.a.upstream_rq_total: 1\ncluster.b.upstream_rq_total: 2\n";
        assert_eq!(
            filter_lines(s, Some("cluster.b")),
            "cluster.b.upstream_rq_total: 2\n"
        );
        assert_eq!(filter_lines(s, None), s);
    }
}
