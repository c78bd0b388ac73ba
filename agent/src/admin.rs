//! The agent's admin HTTP listener, modelled on Envoy's admin interface so Istio's tooling
//! habits carry over: `/stats` (Envoy's text form, `cluster.<name>.<stat>: <value>`, plus
//! kernel counters under `meshpath.`), `/metrics` (Prometheus text), `/ready` (readiness: `LIVE`
//! once the first snapshot of the cluster is programmed, 503 `PRE_INITIALIZING` before, as
//! Envoy answers) and `/healthz` (liveness: the agent's runtime answers).
//! `/ui` serves the live service graph (see [`crate::ui`]). `meshpath stats` reads `/stats`
//! and `meshpath top` `/ui/graph.json`, both through [`fetch`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::kernel_metrics::KernelStats;
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

/// What the agent's metrics come from.
pub struct Sources {
    /// The node proxy's cluster stats, when the proxy runs.
    pub proxy: Option<ProxyStats>,
    /// The node proxy's Istio standard metrics (live families, not copies).
    pub istio: Option<meshpath_proxy::istio_metrics::IstioMetrics>,
    /// bpffs directory of the pinned maps, for the kernel counters.
    pub pin_dir: PathBuf,
    /// The sync loop's counters and latency histogram.
    pub sync: meshpath_source::sync_metrics::SyncMetrics,
    /// The DNS proxy's counters (zero while capture is off).
    pub dns: crate::dns::DnsMetrics,
    /// Istio's TCP metrics from the kernel (`--tcp-metrics`), when the datapath has them.
    pub tcp_metrics: Option<Arc<crate::tcp_metrics::KernelTcpMetrics>>,
    /// Connections reset after rule changes (`--reset-connections`).
    pub conn_resets: crate::conn_reset::ConnResetMetrics,
}

/// What the admin endpoints report: one registry built at start, whose metrics and collectors
/// read the live values at each scrape (nothing is copied into a per-scrape registry), and
/// the same proxy and kernel sources for `/stats`.
#[derive(Clone)]
pub struct AdminState {
    registry: Arc<Registry>,
    proxy: Option<ProxyStats>,
    kernel: Arc<KernelStats>,
    /// Set once the first snapshot of the cluster is programmed.
    pub programmed: Arc<AtomicBool>,
    /// Recent samples of the Istio metrics, for the service graph's rates.
    pub graph: crate::ui::SharedHistory,
    /// Asks the reconcile loop for a full recompile (`POST /debug/recompile`).
    pub recompile: Option<tokio::sync::mpsc::Sender<RecompileReply>>,
}

/// Where the reconcile loop answers a recompile request.
pub type RecompileReply = tokio::sync::oneshot::Sender<crate::reconcile::RecompileReport>;

impl AdminState {
    pub fn new(sources: Sources) -> Self {
        let kernel = Arc::new(KernelStats::new(sources.pin_dir));
        let mut registry = Registry::default();
        if let Some(p) = &sources.proxy {
            registry.register_collector(Box::new(p.clone()));
        }
        if let Some(m) = &sources.istio {
            m.register(&mut registry);
        }
        sources.sync.register(&mut registry);
        sources.dns.register(&mut registry);
        sources.conn_resets.register(&mut registry);
        registry.register_collector(Box::new(kernel.clone()));
        if let Some(tcp) = sources.tcp_metrics {
            registry.register_collector(Box::new(tcp));
        }
        Self {
            registry: Arc::new(registry),
            proxy: sources.proxy,
            kernel,
            programmed: Default::default(),
            graph: Default::default(),
            recompile: None,
        }
    }

    /// Prometheus text of the one registry. Blocking: the kernel collectors read maps.
    pub fn encode_metrics(&self) -> String {
        let mut out = String::new();
        if let Err(error) = encode(&mut out, &self.registry) {
            warn!(%error, "encoding metrics");
        }
        out
    }
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
        // It writes the maps: not on a GET.
        "/debug/recompile" if req.method() == http::Method::POST => match recompile(state).await {
            Some(report) => ("text/plain", report.to_string()),
            None => {
                let mut r = Response::new(Full::new(Bytes::from_static(
                    b"the agent is not reconciling\n",
                )));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return r;
            }
        },
        "/stats" => ("text/plain", envoy_stats(state).await),
        "/metrics" => (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics(state).await,
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
    let kernel = state.kernel.clone();
    let text = tokio::task::spawn_blocking(move || kernel.envoy_text())
        .await
        .unwrap_or_default();
    out.push_str(&text);
    out
}

/// A full recompile by the reconcile loop, once it is between passes.
async fn recompile(state: &AdminState) -> Option<crate::reconcile::RecompileReport> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.recompile.as_ref()?.send(tx).await.ok()?;
    rx.await.ok()
}

/// Prometheus text of the one registry (the kernel collectors read maps: off the workers).
async fn metrics(state: &AdminState) -> String {
    let state = state.clone();
    tokio::task::spawn_blocking(move || state.encode_metrics())
        .await
        .unwrap_or_default()
}

/// `GET path` (e.g. `/stats`) from a running agent's admin listener: the body of a 200 answer.
/// Plain HTTP/1.0, so no client stack is needed.
pub async fn fetch(addr: SocketAddr, path: &str) -> Result<String, AdminError> {
    request(addr, "GET", path).await
}

/// As [`fetch`], with another method (`POST /debug/recompile`).
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Result<String, AdminError> {
    let io = |source| AdminError::Fetch {
        addr,
        path: path.to_owned(),
        source,
    };
    let mut s = TcpStream::connect(addr).await.map_err(io)?;
    let request = format!("{method} {path} HTTP/1.0\r\nHost: meshpath\r\n\r\n");
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
        let state = AdminState::new(Sources {
            proxy: None,
            istio: None,
            pin_dir: PathBuf::from("/nonexistent/meshpath-admin-test"),
            sync: Default::default(),
            dns: Default::default(),
            tcp_metrics: None,
            conn_resets: Default::default(),
        });
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

    #[tokio::test]
    async fn metrics_name_clusters_like_istio() {
        use meshpath_model::l7::{Cluster, ClusterKey, L7Config};
        let key = ClusterKey {
            service: meshpath_model::ObjectRef::new("default", "web"),
            port: 8080,
            subset: Some("v1".into()),
            view: None,
        };
        let cfg = L7Config {
            clusters: [(
                key,
                Cluster {
                    endpoints: vec![],
                    policy: Default::default(),
                }
                .into(),
            )]
            .into_iter()
            .collect(),
            ..L7Config::default()
        };
        let (_tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(cfg));
        let proxy = meshpath_proxy::Proxy::new(rx);
        let state = AdminState::new(Sources {
            proxy: Some(proxy.stats()),
            istio: Some(proxy.istio_metrics()),
            pin_dir: PathBuf::from("/nonexistent"),
            sync: Default::default(),
            dns: Default::default(),
            tcp_metrics: None,
            conn_resets: Default::default(),
        });
        let text = metrics(&state).await;
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
