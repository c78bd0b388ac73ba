//! The node's L7 proxy: the kernel steers connections that need L7 decisions (Istio
//! VirtualService / DestinationRule features) to this one userspace proxy, which behaves like
//! Istio's Envoy sidecar for them. It executes an [`L7Config`] (see `meshpath_model::l7`).
//!
//! Wiring (see [`serve`]): bind a `TcpListener`, implement [`OriginalDst`] from the kernel's
//! record of where each client connected, and feed configs through a `watch` channel:
//!
//! ```ignore
//! let (tx, rx) = tokio::sync::watch::channel(Arc::new(L7Config::default()));
//! let proxy = Proxy::new(rx);
//! tokio::spawn(proxy::serve(listener, Arc::new(BpfOriginalDst::new(..)), proxy));
//! tx.send(Arc::new(compiled_l7_config))?; // built off the request path, then swapped in
//! proxy.apply(config);                      // or at once, on the caller's thread
//! ```
//!
//! A request goes through named layers (route, fault, mirror, then per attempt admission,
//! balance, outlier and retry); `layers` lists them and says how they are composed.
//!
//! Behaviour where Envoy/Istio leave a choice:
//! - no original destination for a connection: every request gets 404 (Envoy's "no route");
//! - an original destination whose listener a config dropped (its frontend stopped being
//!   steered here): the connections that used it keep it, and for a grace period
//!   (`ProxyOptions::retired_listener_grace`) new ones get it too, as plain forwarding to its
//!   Service (the routes no longer apply); each such answer asks the client to reconnect
//!   (`Connection: close`, or GOAWAY on HTTP/2), which the kernel then balances itself;
//! - an original destination with no `listeners` entry otherwise: passthrough to that address
//!   (Istio's `PassthroughCluster`, `outboundTrafficPolicy: ALLOW_ANY`), unless it is the
//!   proxy's own address (404). The proxy's own upstream connections must therefore NOT be
//!   steered back to it by the kernel;
//! - routes present but none matches: 404, empty body (Istio adds no fallback route to a
//!   service that has a VirtualService); no routes at all: everything to `default_cluster`;
//! - `retries: None` is Istio's mesh default (2 retries on connect-failure and 503); an empty
//!   `retry_on` gets those default conditions; `timeout: None` is no timeout (Istio's 0s);
//! - the upstream protocol follows the client's (HTTP/1.1, or h2c for HTTP/2 clients);
//! - request bodies are buffered for retries and mirrors only up to `max_buffered_body` and
//!   when their length is known; larger ones stream and are retried only before being sent.

mod body;
mod breaker;
mod cluster_metrics;
pub mod export;
mod forward;
mod h1;
// The fuzz targets' entry point (fuzz/), never part of a normal build.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod hash;
mod hashkey;
mod headers;
mod idle;
mod idle_h2;
pub mod istio_metrics;
mod istio_series;
mod layers;
mod lb;
mod locality;
mod matching;
mod mirror;
mod operation;
mod otlp;
mod outlier;
mod redirect;
mod retry;
mod rewrite;
mod router_stats;
mod server;
mod snapshot;
mod trace;
mod upgrade;
mod upstream;
mod warmup;
mod workers;
mod workload;
mod zipkin;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tokio::sync::watch;

use meshpath_model::l7::{HttpRoute, L7Config};

pub use outlier::EjectedSet;
pub use server::{serve, serve_on, serve_until, Stop};
pub use trace::{Span, SpanExporter};
pub use workers::{Workers, WorkersError};
pub use workload::Workload;

/// A pod's labels, shared by all its connections.
pub type Labels = Arc<BTreeMap<String, String>>;

/// The labels of a client that is not a known pod (one allocation for the process).
pub fn no_labels() -> Labels {
    static NONE: std::sync::LazyLock<Labels> = std::sync::LazyLock::new(Labels::default);
    NONE.clone()
}

/// Where a steered connection was originally going, and who opened it.
pub trait OriginalDst: Send + Sync {
    /// The ClusterIP:port the client connected to (recorded by the kernel when it redirected
    /// the connect to the proxy), `None` if unknown. Called once per accepted connection.
    fn original_dst(&self, stream: &TcpStream, peer: SocketAddr) -> Option<SocketAddr>;

    /// Labels of the pod at `peer`, for `sourceLabels` matches. Called once per connection:
    /// shared, so that an accepted connection costs no copy of them.
    fn source_labels(&self, _peer: SocketAddr) -> Labels {
        no_labels()
    }

    /// The workload of the pod at `peer`, for span names, tags and per-workload sampling.
    /// Called once per connection.
    fn source_workload(&self, _peer: SocketAddr) -> Option<Arc<Workload>> {
        None
    }
}

#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Percentage of new traces sampled (Istio's default `sampling` is 1%).
    pub trace_sampling: f64,
    /// Largest request body kept in memory so a retry or a mirror can replay it (Envoy's
    /// default buffer limit, 1 MiB).
    pub max_buffered_body: usize,
    /// Idle HTTP/1 connections kept per endpoint and worker thread; more are closed when they
    /// come back. Envoy
    /// keeps them all; a cap below the client concurrency makes the proxy open a new upstream
    /// connection for most requests (the L7 benchmark saw ~11 000 per 5 s at 64 clients with 32).
    pub max_idle_per_endpoint: usize,
    /// How long a listener a config dropped keeps serving connections that had no request on
    /// it yet (plain forwarding); the connections it served keep it as long as they last.
    pub retired_listener_grace: std::time::Duration,
    /// Plain HTTP/1.1 requests served by the proxy's own server (`h1::serve`); `false`: hyper's
    /// server for every connection.
    pub own_http1: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            trace_sampling: 1.0,
            max_buffered_body: 1 << 20,
            max_idle_per_endpoint: 1024,
            retired_listener_grace: snapshot::RETIRED_GRACE,
            own_http1: true,
        }
    }
}

/// The proxy: routing state shared by all connections.
pub struct Proxy {
    /// The routing snapshot requests start from: read without a lock, replaced whole (see
    /// [`Proxy::apply`]), so no request ever waits for a rebuild.
    current: ArcSwap<snapshot::Snapshot>,
    /// What only a rebuild touches; requests never take it.
    builder: Mutex<snapshot::Registry>,
    /// Per-cluster stats, kept across config swaps.
    stats: Arc<Mutex<breaker::StatsMap>>,
    /// Stats of requests that reached no cluster.
    router_stats: Arc<router_stats::RouterStats>,
    /// `outlierDetection` ejections of every cluster, kept across config swaps.
    outliers: Arc<outlier::Outliers>,
    /// Strong references for passthrough destinations, which no snapshot lists: keeps their
    /// connection pools alive between requests.
    passthrough: Mutex<HashMap<SocketAddr, Arc<upstream::Endpoint>>>,
    passthrough_route: snapshot::RouteRt,
    opts: ProxyOptions,
    exporter: Option<Arc<dyn SpanExporter>>,
    metrics: istio_metrics::IstioMetrics,
}

/// Bound on remembered passthrough destinations (each holds an idle pool).
const MAX_PASSTHROUGH: usize = 1024;

impl Proxy {
    pub fn new(config: watch::Receiver<Arc<L7Config>>) -> Arc<Proxy> {
        Proxy::with_options(config, ProxyOptions::default(), None)
    }

    /// A proxy serving `config`'s current value. Later values are applied by a task watching
    /// the channel (when called inside a tokio runtime), or at once by [`Proxy::apply`].
    pub fn with_options(
        config: watch::Receiver<Arc<L7Config>>,
        opts: ProxyOptions,
        exporter: Option<Arc<dyn SpanExporter>>,
    ) -> Arc<Proxy> {
        let mut registry = snapshot::Registry::new();
        let mut stats = breaker::StatsMap::new();
        let outliers = outlier::Outliers::new();
        let first = snapshot::build(
            config.borrow().clone(),
            None,
            &mut registry,
            &mut stats,
            &outliers,
        );
        let none = |k: &meshpath_model::l7::ClusterKey| snapshot::Dest {
            key: snapshot::ClusterId::new(k),
            cluster: None,
            ops: None,
        };
        let proxy = Arc::new(Proxy {
            current: ArcSwap::from_pointee(first),
            builder: Mutex::new(registry),
            stats: Arc::new(Mutex::new(stats)),
            router_stats: Arc::default(),
            outliers,
            passthrough: Mutex::new(HashMap::new()),
            passthrough_route: snapshot::route_rt(&HttpRoute::default(), &none),
            opts,
            exporter,
            metrics: istio_metrics::IstioMetrics::default(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(follow(config, Arc::downgrade(&proxy)));
        }
        proxy
    }

    /// Serves `config` from now on if it differs from the one served: the routing snapshot
    /// (matchers, balancer tables) is built here, on the caller's thread, then swapped in
    /// whole. Requests in flight keep the snapshot they started with; new ones take the new
    /// one without waiting. A config equal to the served one (a reconcile that changed only
    /// the kernel side, e.g. an outlier ejection) costs one comparison. Returns whether it
    /// was applied.
    pub fn apply(&self, config: Arc<L7Config>) -> bool {
        self.apply_with(|| config)
    }

    /// [`apply`](Self::apply) of what `latest` returns under the build lock: the channel
    /// follower reads the channel's value there, so a value it was woken for long ago can
    /// never replace a newer one applied directly meanwhile (senders publish before they
    /// apply).
    fn apply_with(&self, latest: impl FnOnce() -> Arc<L7Config>) -> bool {
        // One rebuild at a time, so the last config applied is the last one served.
        let mut registry = self.builder.lock().unwrap_or_else(|p| p.into_inner());
        let config = latest();
        let served = self.current.load();
        if Arc::ptr_eq(&served.config, &config) || served.config.same_as(&config) {
            return false;
        }
        let started = std::time::Instant::now();
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let next = snapshot::build(
            config,
            Some((&served, self.opts.retired_listener_grace)),
            &mut registry,
            &mut stats,
            &self.outliers,
        );
        drop(stats);
        tracing::info!(
            listeners = next.listeners.len(),
            clusters = next.config.clusters.len(),
            build_us = started.elapsed().as_micros() as u64,
            "proxy config applied"
        );
        self.current.store(Arc::new(next));
        true
    }

    /// Waits until `config` (or an equal one) is served.
    #[cfg(test)]
    pub(crate) async fn wait_applied(&self, config: &Arc<L7Config>) {
        for _ in 0..2000 {
            if *self.current.load().config == **config {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("config not applied within 2 s");
    }

    /// The snapshot for a new request: a lock-free load of the published one.
    fn snapshot(&self) -> Arc<snapshot::Snapshot> {
        self.current.load_full()
    }

    /// Istio's standard metrics, live: register them once in the admin's registry.
    pub fn istio_metrics(&self) -> istio_metrics::IstioMetrics {
        self.metrics.clone()
    }

    /// A handle on the per-cluster stats, for the admin endpoint.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            clusters: self.stats.clone(),
            router: self.router_stats.clone(),
        }
    }

    /// The endpoints `outlierDetection` currently ejects (all clusters), for the agent to
    /// take them out of the kernel's selection too; changes whenever one is ejected or returns.
    pub fn ejected_endpoints(&self) -> watch::Receiver<EjectedSet> {
        self.outliers.subscribe()
    }

    fn passthrough_endpoint(&self, addr: SocketAddr) -> Arc<upstream::Endpoint> {
        let mut map = self.passthrough.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ep) = map.get(&addr) {
            return ep.clone();
        }
        if map.len() >= MAX_PASSTHROUGH {
            map.clear();
        }
        // Passthrough destinations are in no cluster: this map alone shares their pools.
        let ep = Arc::new(upstream::Endpoint::new(addr, None));
        map.insert(addr, ep.clone());
        ep
    }
}

/// Applies every new value of the config channel, off the request path: the build runs on
/// the blocking pool, so the runtime's workers keep serving requests meanwhile. Ends with
/// the channel or the proxy.
async fn follow(mut config: watch::Receiver<Arc<L7Config>>, proxy: Weak<Proxy>) {
    while config.changed().await.is_ok() {
        config.mark_unchanged();
        let Some(proxy) = proxy.upgrade() else { return };
        let channel = config.clone();
        let build = move || proxy.apply_with(|| channel.borrow().clone());
        if tokio::task::spawn_blocking(build).await.is_err() {
            tracing::error!("proxy config build panicked; the previous config stays served");
        }
    }
}

/// The proxy's per-cluster and router stats, readable while it runs: Envoy's `/stats` text,
/// and a prometheus-client `Collector` (register it once; each scrape reads the live values).
#[derive(Clone)]
pub struct ProxyStats {
    clusters: Arc<Mutex<breaker::StatsMap>>,
    router: Arc<router_stats::RouterStats>,
}

impl ProxyStats {
    /// Envoy's `/stats` text for the clusters, then the router's (`http.<prefix>.no_cluster`).
    pub fn envoy_text(&self) -> String {
        let mut out =
            breaker::render_envoy(&self.clusters.lock().unwrap_or_else(|p| p.into_inner()));
        out.push_str(&self.router.render_envoy());
        out
    }

    /// `(envoy cluster name, stat, value, is_counter)` for every cluster.
    #[cfg(test)]
    pub(crate) fn values(&self) -> Vec<(String, &'static str, u64, bool)> {
        let map = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (key, st) in map.iter() {
            let name = breaker::envoy_cluster_name(key);
            for (stat, v, c) in st.values() {
                out.push((name.clone(), stat, v, c));
            }
        }
        out
    }

    /// `(http connection manager stat prefix, stat, value)` of the router, all counters.
    pub fn router_values(&self) -> Vec<(String, &'static str, u64)> {
        self.router.values()
    }
}
