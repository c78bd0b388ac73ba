//! The L7 routing table: what the node proxy executes. `compile` produces it from the Istio objects
//! (VirtualService, DestinationRule) and the Services/EndpointSlices/Pods of the model, with every
//! host already resolved to a Service and every name already validated; the proxy only evaluates.
//!
//! This is the contract between compiling Istio config and serving requests: both sides build
//! against these types, and tests construct them directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::ObjectRef;

mod cors;
mod export;
mod locality;

pub use cors::CorsPolicy;
pub use export::{Export, RuleView};
pub use locality::{LocalityDistribute, LocalityLb};

/// Everything the proxy needs, swapped atomically on every change (`Arc<L7Config>`).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct L7Config {
    /// Keyed by the ClusterIP:port a client connected to (the original destination the kernel
    /// recorded when it steered the connection to the proxy).
    /// Shared between tables, as `clusters` are.
    pub listeners: BTreeMap<SocketAddr, std::sync::Arc<ServiceRoutes>>,
    /// Endpoints of every (service, port) a route can send to, with pod labels for subsets.
    /// Shared between tables: a copy of the table copies pointers, and a cluster a change left
    /// alone is the same allocation in the next table ([`L7Config::same_as`]).
    pub clusters: BTreeMap<ClusterKey, std::sync::Arc<Cluster>>,
    /// The locality of the node the proxy runs on (`localityLbSetting` ranks endpoints by
    /// their distance to it); empty when unknown.
    pub locality: crate::Locality,
}

impl L7Config {
    /// `==`, with clusters that are the same allocation taken as equal without reading them
    /// (at 10 000 clusters reading them is most of the comparison).
    pub fn same_as(&self, other: &L7Config) -> bool {
        self.locality == other.locality
            && self.listeners.len() == other.listeners.len()
            && self
                .listeners
                .iter()
                .zip(&other.listeners)
                .all(|((a1, r1), (a2, r2))| {
                    a1 == a2 && (std::sync::Arc::ptr_eq(r1, r2) || r1 == r2)
                })
            && self.clusters.len() == other.clusters.len()
            && self
                .clusters
                .iter()
                .zip(&other.clusters)
                .all(|((k1, c1), (k2, c2))| k1 == k2 && same_cluster(c1, c2))
    }
}

/// Whether two shared clusters are equal, by pointer first.
pub fn same_cluster(a: &std::sync::Arc<Cluster>, b: &std::sync::Arc<Cluster>) -> bool {
    std::sync::Arc::ptr_eq(a, b) || a == b
}

/// A service port the proxy serves: the VirtualService routes that apply to it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRoutes {
    pub service: ObjectRef,
    /// Part of the table's identity; read by logs and tests, not by routing.
    pub port: u16,
    /// `http:` routes, in order; the first whose match holds wins, and a request no route
    /// matches gets 404, as with Istio. Empty: plain forwarding to `default_cluster` (a service
    /// steered only for a DestinationRule policy, or not steered at all: see
    /// `compile::l7::needs_proxy`).
    pub http: Vec<HttpRoute>,
    /// The service itself, for plain forwarding when `http` is empty.
    pub default_cluster: ClusterKey,
    /// `exportTo`: the clients these routes are for, and the others' routes.
    pub export: Export,
}

/// An upstream: a service port, optionally narrowed to a DestinationRule subset.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    pub service: ObjectRef,
    pub port: u16,
    pub subset: Option<String>,
    /// The DestinationRule the cluster follows when some clients see another one than the
    /// rest (`exportTo`, rules in the client's namespace); `None`: the one clients without a
    /// rule of their own see.
    pub view: Option<RuleView>,
}

impl ClusterKey {
    /// The cluster every client sees (no DestinationRule view of its own).
    pub fn new(service: ObjectRef, port: u16, subset: Option<String>) -> Self {
        ClusterKey {
            service,
            port,
            subset,
            view: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    /// Ready endpoints (already filtered by the subset's labels).
    pub endpoints: Vec<Endpoint>,
    pub policy: TrafficPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub labels: BTreeMap<String, String>,
    /// Where it runs (its node's locality); empty when unknown.
    pub locality: crate::Locality,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct HttpRoute {
    /// Istio's route name, kept for access logs and per-route stats.
    pub name: Option<String>,
    /// The VirtualService's name: Istio's span operation for a route that does not send to
    /// exactly one cluster is `<virtual service>:<port><path>`.
    pub virtual_service: Option<String>,
    /// OR of the matches; empty means "match everything".
    pub matches: Vec<HttpMatch>,
    pub action: RouteAction,
    pub fault: Option<Fault>,
    /// Each rolled on its own, at its percentage.
    pub mirrors: Vec<Mirror>,
    pub timeout: Option<Duration>,
    pub retries: Option<RetryPolicy>,
    pub rewrite: Option<Rewrite>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// `corsPolicy`: preflights answered by the proxy, CORS headers on responses.
    pub cors: Option<CorsPolicy>,
}

/// AND of every condition present.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct HttpMatch {
    pub uri: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    /// Header name (lower-case) → condition; `None` = the header must be present.
    pub headers: Vec<(String, Option<StringMatch>)>,
    /// Header names that must be absent (`withoutHeaders`).
    pub without_headers: Vec<(String, Option<StringMatch>)>,
    pub query_params: Vec<(String, StringMatch)>,
    /// Labels the calling pod must carry (`sourceLabels`).
    pub source_labels: BTreeMap<String, String>,
    pub ignore_uri_case: bool,
}

/// Compared by pattern (a compiled `Regex` has no equality): see the `PartialEq` below.
#[derive(Clone, Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// Anchored like Envoy's (RE2 full match), compiled once.
    Regex(Arc<regex::Regex>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum RouteAction {
    /// Weighted destinations, each drawn with its weight's share of their sum, as Envoy draws
    /// them (a single destination has weight 100).
    Route(Vec<WeightedCluster>),
    Redirect(Redirect),
    DirectResponse {
        status: u16,
        body: Option<Arc<[u8]>>,
    },
}

impl Default for RouteAction {
    fn default() -> Self {
        RouteAction::Route(Vec::new())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct WeightedCluster {
    pub cluster: ClusterKey,
    pub weight: u32,
    /// `route[].headers`: applied before the route's own (Envoy's most specific first).
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

impl WeightedCluster {
    /// A destination without header operations of its own.
    pub fn new(cluster: ClusterKey, weight: u32) -> Self {
        WeightedCluster {
            cluster,
            weight,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Fault {
    /// (delay, percentage 0.0..=100.0)
    pub delay: Option<(Duration, f64)>,
    /// (what to answer, percentage 0.0..=100.0); Envoy answers with body `fault filter abort`.
    pub abort: Option<(Abort, f64)>,
}

/// A fault abort's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    Http(u16),
    /// A gRPC status code (0..=16): a gRPC request gets a trailers-only answer with it, any
    /// other request 503, as Envoy's fault filter does.
    Grpc(u8),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    pub cluster: ClusterKey,
    /// 0.0..=100.0 (`mirrorPercentage.value`, or the deprecated integer `mirrorPercent`).
    pub percentage: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: Vec<RetryOn>,
    /// `backoff`: the base interval of Envoy's jittered exponential back-off between retries
    /// (at most ten times it); `None`: Envoy's 25 ms.
    pub backoff: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOn {
    FiveXx,
    GatewayError,
    ConnectFailure,
    Reset,
    RetriableStatus4xx,
}

#[derive(Clone, Debug, Default)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    /// `uriRegexRewrite`: (unanchored pattern, substitution in `regex` syntax) over the path.
    pub uri_regex: Option<(Arc<regex::Regex>, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub port: Option<u16>,
    /// `derivePort: FROM_PROTOCOL_DEFAULT`: the request's port is dropped, so the scheme's
    /// default applies. (`FROM_REQUEST_PORT` is compiled into `port`.)
    pub protocol_default_port: bool,
    /// Default 301.
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct HeaderOps {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// A DestinationRule `trafficPolicy`, already merged (subset policy over service policy).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TrafficPolicy {
    pub load_balancer: LoadBalancer,
    pub connection_pool: ConnectionPool,
    pub outlier_detection: Option<OutlierDetection>,
    /// `loadBalancer.warmup`: Envoy's slow start for round robin and least request.
    pub slow_start: Option<SlowStart>,
    /// `loadBalancer.localityLbSetting` (Istio's default when not written: enabled, no
    /// settings); `None` when disabled.
    pub locality_lb: Option<LocalityLb>,
}

/// Envoy's slow start: an endpoint that joins a cluster gets weight
/// `max(min_weight, (age / window)^(1 / aggression))` until it is `window` old.
#[derive(Clone, Debug, PartialEq)]
pub struct SlowStart {
    pub window: Duration,
    /// 0.0..=1.0 (Istio's `minimumPercent` / 100; 10 % by default).
    pub min_weight: f64,
    /// Greater than 0; 1.0 is linear.
    pub aggression: f64,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub enum LoadBalancer {
    /// Istio's default.
    #[default]
    RoundRobin,
    /// `LEAST_REQUEST`, and the older `LEAST_CONN`.
    LeastRequest,
    Random,
    /// Forward to the original destination address, no balancing.
    Passthrough,
    ConsistentHash {
        key: HashKey,
        algorithm: HashAlgorithm,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum HashKey {
    Header(String),
    /// Cookie name, path, ttl; a ttl makes the proxy issue the cookie when absent.
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HashAlgorithm {
    RingHash { minimum_ring_size: u64 },
    Maglev { table_size: u64 },
}

/// `connectionPool` (enforced by the proxy; issue "circuit breaking" adds the kernel side).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ConnectionPool {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<Duration>,
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct OutlierDetection {
    pub consecutive_5xx_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

// Equality of configs decides whether the proxy rebuilds its routing tables: two regexes are
// the same condition when their patterns are the same text.
impl PartialEq for StringMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (StringMatch::Exact(a), StringMatch::Exact(b)) => a == b,
            (StringMatch::Prefix(a), StringMatch::Prefix(b)) => a == b,
            (StringMatch::Regex(a), StringMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl PartialEq for Rewrite {
    fn eq(&self, other: &Self) -> bool {
        let re = |r: &Option<(Arc<regex::Regex>, String)>| {
            r.as_ref()
                .map(|(re, with)| (re.as_str().to_owned(), with.clone()))
        };
        self.uri == other.uri
            && self.authority == other.authority
            && re(&self.uri_regex) == re(&other.uri_regex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_regex(pattern: &str, weight: u32) -> HttpRoute {
        HttpRoute {
            matches: vec![HttpMatch {
                uri: Some(StringMatch::Regex(Arc::new(
                    regex::Regex::new(pattern).unwrap(),
                ))),
                ..HttpMatch::default()
            }],
            action: RouteAction::Route(vec![WeightedCluster::new(
                ClusterKey::new(ObjectRef::new("default", "svc"), 80, None),
                weight,
            )]),
            ..HttpRoute::default()
        }
    }

    #[test]
    fn routes_compare_by_content_and_regexes_by_pattern() {
        // Separately compiled, same pattern: the same route (no rebuild for a no-op change).
        assert_eq!(with_regex("/a.*", 100), with_regex("/a.*", 100));
        assert_ne!(with_regex("/a.*", 100), with_regex("/b.*", 100));
        assert_ne!(with_regex("/a.*", 100), with_regex("/a.*", 50));
    }
}
