//! In-process tests: real TCP on 127.0.0.1 for the client, the proxy and the backends; the
//! kernel's original-destination record is faked by [`FixedDst`].

mod actions;
mod bench;
mod circuit_breaking;
mod config_swap;
mod cors;
mod downstream_h1;
mod downstream_h1_more;
mod export;
mod faults;
mod istio_metrics;
mod jaeger;
mod lb;
mod matching;
mod missing_cluster;
mod outlier;
mod profile;
mod request_limits;
mod retries;
mod route_features;
mod routing;
mod span_export;
mod tracing_ids;
mod upstream_h1;
mod upstream_h1_conn;
mod warmup;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{serve, serve_on, OriginalDst, Proxy, ProxyOptions, Span, SpanExporter, Workers};
use meshpath_model::l7::*;
use meshpath_model::ObjectRef;

/// The ClusterIP:port the fake kernel says every client connected to.
pub(super) const VIP: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 10)),
    80,
);

/// What a backend saw of one request.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// `Host`, or the HTTP/2 `:authority` (which hyper keeps in the URI).
    pub fn host(&self) -> String {
        match self.header("host") {
            Some(h) => h.to_owned(),
            None => self
                .uri
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.authority().map(|a| a.to_string()))
                .unwrap_or_default(),
        }
    }
}

/// How a backend answers its `n`th request (0-based): status and delay before answering.
pub(super) type Behavior = Arc<dyn Fn(&Seen, usize) -> (u16, Duration) + Send + Sync>;

pub(super) struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Backend {
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("backend saw no request")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend answering 200 with its name as the body and `x-backend: name`.
pub(super) async fn backend(name: &'static str) -> Backend {
    backend_with(name, Arc::new(|_, _| (200, Duration::ZERO))).await
}

pub(super) async fn backend_with(name: &'static str, behavior: Behavior) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let n = Arc::new(AtomicUsize::new(0));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (log, n, behavior) = (log.clone(), n.clone(), behavior.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (log, n, behavior) = (log.clone(), n.clone(), behavior.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let seen = Seen {
                            uri: parts.uri.to_string(),
                            version: parts.version,
                            headers: parts.headers,
                            body,
                        };
                        log.lock().unwrap().push(seen.clone());
                        let (status, delay) = behavior(&seen, n.fetch_add(1, Ordering::SeqCst));
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let mut resp =
                            Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                        resp.headers_mut()
                            .insert("x-backend", name.parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend { addr, seen, task }
}

/// An address nothing listens on (bound, then closed).
pub(super) async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// The fake kernel record: a fixed original destination and fixed source labels.
pub(super) struct FixedDst {
    pub dst: Option<SocketAddr>,
    pub labels: BTreeMap<String, String>,
}

impl OriginalDst for FixedDst {
    fn original_dst(&self, _stream: &TcpStream, _peer: SocketAddr) -> Option<SocketAddr> {
        self.dst
    }
    fn source_labels(&self, _peer: SocketAddr) -> crate::Labels {
        Arc::new(self.labels.clone())
    }
}

/// The config channel of a test's proxy. A new config is applied at once (as the agent does
/// with `Proxy::apply`), so the request a test sends next sees it; the proxy's own channel
/// follower then finds nothing left to do.
pub(super) struct ConfigTx {
    tx: watch::Sender<Arc<L7Config>>,
    pub proxy: Arc<Proxy>,
}

impl ConfigTx {
    pub fn new(tx: watch::Sender<Arc<L7Config>>, proxy: Arc<Proxy>) -> ConfigTx {
        ConfigTx { tx, proxy }
    }

    pub fn send(&self, cfg: Arc<L7Config>) -> Result<(), watch::error::SendError<Arc<L7Config>>> {
        // Published first, as the agent does, so the follower never reverts to an older one.
        let sent = self.tx.send(cfg.clone());
        self.proxy.apply(cfg);
        sent
    }

    pub fn send_replace(&self, cfg: Arc<L7Config>) -> Arc<L7Config> {
        let old = self.tx.send_replace(cfg.clone());
        self.proxy.apply(cfg);
        old
    }
}

pub(super) struct Harness {
    pub addr: SocketAddr,
    pub tx: ConfigTx,
    client: Client<HttpConnector, Full<Bytes>>,
    h2: Client<HttpConnector, Full<Bytes>>,
    task: JoinHandle<()>,
    workers: Arc<Workers>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
        self.workers.stop();
    }
}

pub(super) async fn start(cfg: L7Config) -> Harness {
    start_with(
        cfg,
        FixedDst {
            dst: Some(VIP),
            labels: BTreeMap::new(),
        },
        None,
    )
    .await
}

pub(super) async fn start_with(
    cfg: L7Config,
    dst: impl OriginalDst + 'static,
    exporter: Option<Arc<dyn SpanExporter>>,
) -> Harness {
    let (tx, rx) = watch::channel(Arc::new(cfg));
    let opts = ProxyOptions {
        trace_sampling: 100.0,
        ..ProxyOptions::default()
    };
    let proxy = Proxy::with_options(rx, opts, exporter);
    let tx = ConfigTx::new(tx, proxy.clone());
    serve_harness(proxy, tx, dst).await
}

/// Serves `proxy` on a loopback port as the agent runs it: connections dealt over worker
/// threads of their own, the accept loop on the test's runtime.
pub(super) async fn serve_harness(
    proxy: Arc<Proxy>,
    tx: ConfigTx,
    dst: impl OriginalDst + 'static,
) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let workers = Workers::start(2, "test-proxy", || Ok(())).unwrap();
    let task = tokio::spawn(serve_on(
        workers.clone(),
        listener,
        Arc::new(dst),
        proxy,
        std::future::pending(),
    ));
    Harness {
        addr,
        tx,
        client: Client::builder(TokioExecutor::new()).build_http(),
        h2: Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http(),
        task,
        workers,
    }
}

#[tokio::test]
async fn default_options_sample_like_istio() {
    let (_tx, rx) = watch::channel(Arc::new(L7Config::default()));
    assert_eq!(Proxy::new(rx).opts.trace_sampling, 1.0);
}

/// A response with its body read.
#[derive(Debug)]
pub(super) struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Harness {
    pub async fn get(&self, path: &str) -> Got {
        self.send(Request::get(path).body(Bytes::new()).unwrap())
            .await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        let mut b = Request::get(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Bytes::new()).unwrap()).await
    }

    /// Sends over a pooled HTTP/1.1 connection (HTTP/2 when the request's version says so);
    /// the path is made absolute towards the proxy, `Host` defaults to `svc.default`.
    pub async fn send(&self, req: Request<Bytes>) -> Got {
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.to_string());
        parts.uri = format!("http://{}{}", self.addr, pq).parse().unwrap();
        let h2 = parts.version == Version::HTTP_2;
        if !h2 && !parts.headers.contains_key("host") {
            parts.headers.insert("host", "svc.default".parse().unwrap());
        }
        let req = Request::from_parts(parts, Full::new(body));
        let resp = if h2 {
            self.h2.request(req).await
        } else {
            self.client.request(req).await
        }
        .expect("proxy answered");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

pub(super) fn key(name: &str) -> ClusterKey {
    ClusterKey {
        service: ObjectRef::new("default", name),
        port: 80,
        subset: None,
        view: None,
    }
}

pub(super) fn cluster(addrs: &[SocketAddr], lb: LoadBalancer) -> Cluster {
    Cluster {
        endpoints: addrs
            .iter()
            .map(|a| Endpoint {
                addr: *a,
                labels: BTreeMap::new(),
                locality: Default::default(),
            })
            .collect(),
        policy: TrafficPolicy {
            load_balancer: lb,
            ..TrafficPolicy::default()
        },
    }
}

pub(super) fn to(k: &ClusterKey) -> RouteAction {
    RouteAction::Route(vec![WeightedCluster::new(k.clone(), 100)])
}

pub(super) fn route(matches: Vec<HttpMatch>, action: RouteAction) -> HttpRoute {
    HttpRoute {
        matches,
        action,
        ..HttpRoute::default()
    }
}

/// One listener at [`VIP`] with `routes`, default cluster `svc`, and `clusters`.
pub(super) fn config(routes: Vec<HttpRoute>, clusters: Vec<(ClusterKey, Cluster)>) -> L7Config {
    let sr = ServiceRoutes {
        service: ObjectRef::new("default", "svc"),
        port: 80,
        http: routes,
        default_cluster: key("svc"),
        export: Export::default(),
    };
    L7Config {
        listeners: [(VIP, sr.into())].into_iter().collect(),
        clusters: clusters.into_iter().map(|(k, c)| (k, c.into())).collect(),
        ..L7Config::default()
    }
}

pub(super) fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}
pub(super) fn prefix(s: &str) -> StringMatch {
    StringMatch::Prefix(s.into())
}
pub(super) fn regex(s: &str) -> StringMatch {
    StringMatch::Regex(Arc::new(regex::Regex::new(s).unwrap()))
}
