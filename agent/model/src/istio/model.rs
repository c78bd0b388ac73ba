//! VirtualService and DestinationRule as the cluster model holds them: every value validated
//! (durations parsed, regexes compiled, weights summing to 100, percentages in range), hosts
//! still the strings the user wrote, with the object's namespace to resolve them in. Resolving
//! hosts to Services and subsets to endpoints needs the other objects: `compile::l7` does it.
//!
//! These are not the `l7` types because the model must be `Eq` (sources publish only when it
//! changes), and a compiled regex or an `f64` is not.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::l7::RetryOn;
use crate::ObjectRef;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualService {
    pub id: ObjectRef,
    /// `file:line` of the document (or another source's description), for errors found when
    /// compiling.
    pub origin: Option<String>,
    pub hosts: Vec<String>,
    /// `exportTo` resolved: the client namespaces the VirtualService applies to (`.` is its
    /// own); `None`: every namespace (`*`, or not written: Istio's default).
    pub export_to: Option<std::collections::BTreeSet<String>>,
    /// `spec.http`, without the routes that cannot apply to mesh traffic.
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<TcpRoute>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRoute {
    /// Position in `spec.http`, for error paths.
    pub index: usize,
    pub name: Option<String>,
    /// OR; empty matches everything.
    pub matches: Vec<HttpMatch>,
    pub action: Action,
    pub fault: Option<Fault>,
    /// `mirror` (with its percentage) and `mirrors`, in that order; Istio allows only one form.
    pub mirrors: Vec<Mirror>,
    pub timeout: Option<Duration>,
    pub retries: Option<Retries>,
    pub rewrite_uri: Option<String>,
    pub rewrite_authority: Option<String>,
    /// `rewrite.uriRegexRewrite`: every match of the pattern in the path replaced.
    pub rewrite_uri_regex: Option<RegexRewrite>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// `route[].headers`, one per destination of [`Action::Route`], same order.
    pub destination_headers: Vec<DestinationHeaders>,
    pub cors: Option<Cors>,
}

/// `rewrite.uriRegexRewrite`; the pattern is not anchored (Envoy's `regex_rewrite` replaces
/// every match), the substitution already in `regex`'s syntax (`\\1` written as `${1}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegexRewrite {
    pub pattern: Pattern,
    pub substitution: String,
}

/// A `route[]` destination's own header operations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationHeaders {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

/// `corsPolicy`, validated; lists as written (Istio joins them for Envoy).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cors {
    /// `allowOrigins`, then the deprecated `allowOrigin` as exact matches.
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<Duration>,
    pub allow_credentials: Option<bool>,
    /// `unmatchedPreflights`: `Some(true)` FORWARD, `Some(false)` IGNORE, `None` unspecified.
    pub forward_unmatched_preflights: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpMatch {
    pub uri: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    /// Lower-case name; `None`: present with any value.
    pub headers: Vec<(String, Option<StringMatch>)>,
    pub without_headers: Vec<(String, Option<StringMatch>)>,
    pub query_params: Vec<(String, StringMatch)>,
    pub source_labels: BTreeMap<String, String>,
    pub ignore_uri_case: bool,
    /// The Service port this match is limited to; compile keeps it only on that port.
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(Pattern),
}

/// A regex anchored like Envoy's RE2 full match, compiled once; equal when the source is.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub source: String,
    pub regex: Arc<regex::Regex>,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// A percentage in 0.0..=100.0; equal when bit-identical (it is only compared to detect change).
#[derive(Clone, Copy, Debug)]
pub struct Percent(pub f64);

impl PartialEq for Percent {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Percent {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// (destination, weight); each gets its weight's share of the weights' sum, as Envoy
    /// draws them (a single destination always gets 100).
    Route(Vec<(Destination, u32)>),
    Redirect(Redirect),
    DirectResponse {
        status: u16,
        /// `body.string`, or `body.bytes` decoded.
        body: Option<Vec<u8>>,
    },
    /// A root VirtualService's `delegate`: the named delegate's routes, merged with this
    /// route by Istio's rules when compiling (`compile::l7::delegate`).
    Delegate(ObjectRef),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub port: Option<u16>,
    pub derive_port: Option<DerivePort>,
    pub status: u16,
}

/// `redirect.derivePort`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DerivePort {
    /// The scheme's default port: none written in `Location`.
    FromProtocolDefault,
    /// The port the request came in on (the listener's, as Istio resolves it per port).
    FromRequestPort,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    pub delay: Option<(Duration, Percent)>,
    pub abort: Option<(Abort, Percent)>,
}

pub use crate::l7::Abort;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub destination: Destination,
    pub percentage: Percent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retries {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// Only the conditions the proxy implements; the others were warned about.
    pub retry_on: Vec<RetryOn>,
    /// `backoff`: base interval between retries.
    pub backoff: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpRoute {
    /// Position in `spec.tcp`, for error paths.
    pub index: usize,
    /// The ports the route is limited to; empty: every port.
    pub ports: Vec<u16>,
    /// Weights scaled to sum to 100 (kernel slots).
    pub route: Vec<(Destination, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationRule {
    pub id: ObjectRef,
    pub origin: Option<String>,
    pub host: String,
    /// `exportTo` resolved like a VirtualService's (`.` is its own namespace); `None`: every
    /// namespace (`*`, or not written).
    pub export_to: Option<std::collections::BTreeSet<String>>,
    pub traffic_policy: TrafficPolicy,
    pub subsets: Vec<Subset>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub traffic_policy: TrafficPolicy,
}

/// A `trafficPolicy`; each part `None` when not written, so that a subset's policy can be merged
/// over its rule's part by part, as Istio does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    /// `loadBalancer.warmup` (or `warmupDurationSecs`), part of `loadBalancer`.
    pub warmup: Option<Warmup>,
    /// `loadBalancer.localityLbSetting`, part of `loadBalancer`.
    pub locality: Option<LocalityLbSetting>,
    /// `portLevelSettings`: for one Service port, parts that replace the policy's own.
    pub port_level: Vec<PortPolicy>,
}

/// `loadBalancer.warmup`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warmup {
    pub duration: Duration,
    /// `minimumPercent`, 10 by default.
    pub minimum_percent: Percent,
    /// `aggression`, 1.0 (linear) by default; a positive number, kept bit for bit.
    pub aggression: Percent,
}

/// `loadBalancer.localityLbSetting`, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalityLbSetting {
    /// `enabled: false` turns locality load balancing off, Istio's default included.
    pub enabled: bool,
    pub settings: crate::l7::LocalityLb,
}

/// One `portLevelSettings` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    pub port: u16,
    pub load_balancer: Option<LoadBalancer>,
    pub warmup: Option<Warmup>,
    pub locality: Option<LocalityLbSetting>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadBalancer {
    RoundRobin,
    LeastRequest,
    Random,
    Passthrough,
    ConsistentHash {
        key: HashKey,
        algorithm: HashAlgorithm,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlgorithm {
    RingHash { minimum_ring_size: u64 },
    Maglev { table_size: u64 },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionPool {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<Duration>,
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    /// `None`: ejection on 5xx disabled (written as 0).
    pub consecutive_5xx_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

impl TrafficPolicy {
    /// `self` (a subset's policy) over `base` (its rule's), part by part.
    pub fn merged_over(&self, base: &TrafficPolicy) -> TrafficPolicy {
        // `loadBalancer` is one part in Istio: its kind and its warmup come from one side.
        let lb = if self.load_balancer.is_some() || self.warmup.is_some() || self.locality.is_some()
        {
            self
        } else {
            base
        };
        TrafficPolicy {
            load_balancer: lb.load_balancer.clone(),
            warmup: lb.warmup.clone(),
            locality: lb.locality.clone(),
            connection_pool: self
                .connection_pool
                .clone()
                .or_else(|| base.connection_pool.clone()),
            outlier_detection: self
                .outlier_detection
                .clone()
                .or_else(|| base.outlier_detection.clone()),
            // Istio: a subset's port settings replace the rule's as a whole.
            port_level: if self.port_level.is_empty() {
                base.port_level.clone()
            } else {
                self.port_level.clone()
            },
        }
    }

    /// The policy for Service port `port`: its `portLevelSettings` entry's parts over the
    /// rest, part by part, as Istio merges them for the port's cluster.
    pub fn for_port(&self, port: u16) -> TrafficPolicy {
        let mut out = TrafficPolicy {
            port_level: Vec::new(),
            ..self.clone()
        };
        if let Some(p) = self.port_level.iter().find(|p| p.port == port) {
            if p.load_balancer.is_some() || p.warmup.is_some() || p.locality.is_some() {
                out.load_balancer.clone_from(&p.load_balancer);
                out.warmup.clone_from(&p.warmup);
                out.locality.clone_from(&p.locality);
            }
            if p.connection_pool.is_some() {
                out.connection_pool.clone_from(&p.connection_pool);
            }
            if p.outlier_detection.is_some() {
                out.outlier_detection.clone_from(&p.outlier_detection);
            }
        }
        out
    }

    /// Whether only the proxy can enforce this policy (for port-level settings, ask
    /// [`for_port`](Self::for_port)'s answer), so the service must be steered to it even
    /// without routes. Round robin and random are the kernel's own balancing; a TCP connection
    /// limit is the kernel's job too.
    pub fn needs_proxy(&self) -> bool {
        let lb = matches!(
            self.load_balancer,
            Some(LoadBalancer::LeastRequest | LoadBalancer::ConsistentHash { .. })
        );
        let http_pool = self.connection_pool.as_ref().is_some_and(|p| {
            p.http1_max_pending_requests.is_some()
                || p.http2_max_requests.is_some()
                || p.max_requests_per_connection.is_some()
                || p.max_retries.is_some()
                || p.idle_timeout.is_some()
        });
        // Slow start weighs endpoints per request (round robin and least request only).
        let warmup = self.warmup.is_some()
            && matches!(
                self.load_balancer,
                None | Some(LoadBalancer::RoundRobin | LoadBalancer::LeastRequest)
            );
        // Locality weights are drawn per request (failover needs outlierDetection, which
        // needs the proxy anyway).
        let distribute = self
            .locality
            .as_ref()
            .is_some_and(|l| l.enabled && !l.settings.distribute.is_empty());
        lb || http_pool || warmup || distribute || self.outlier_detection.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel-only pool: it does not need the proxy.
    fn pool(max: u32) -> Option<ConnectionPool> {
        Some(ConnectionPool {
            max_connections: Some(max),
            ..ConnectionPool::default()
        })
    }

    #[test]
    fn port_settings_replace_parts_for_their_port_only() {
        let policy = TrafficPolicy {
            load_balancer: Some(LoadBalancer::Random),
            connection_pool: pool(1),
            outlier_detection: None,
            warmup: None,
            locality: None,
            port_level: vec![PortPolicy {
                port: 80,
                load_balancer: Some(LoadBalancer::LeastRequest),
                warmup: None,
                locality: None,
                connection_pool: None,
                outlier_detection: None,
            }],
        };
        let p80 = policy.for_port(80);
        assert_eq!(p80.load_balancer, Some(LoadBalancer::LeastRequest));
        assert_eq!(p80.connection_pool, pool(1));
        assert!(p80.port_level.is_empty());
        assert!(p80.needs_proxy() && !policy.for_port(81).needs_proxy());
        assert_eq!(
            policy.for_port(81).load_balancer,
            Some(LoadBalancer::Random)
        );
    }

    #[test]
    fn a_subsets_port_settings_replace_the_rules() {
        let port = |p, lb| PortPolicy {
            port: p,
            load_balancer: Some(lb),
            warmup: None,
            locality: None,
            connection_pool: None,
            outlier_detection: None,
        };
        let rule = TrafficPolicy {
            port_level: vec![
                port(80, LoadBalancer::LeastRequest),
                port(81, LoadBalancer::Random),
            ],
            ..TrafficPolicy::default()
        };
        let subset = TrafficPolicy {
            port_level: vec![port(80, LoadBalancer::RoundRobin)],
            ..TrafficPolicy::default()
        };
        let merged = subset.merged_over(&rule);
        assert_eq!(
            merged.for_port(80).load_balancer,
            Some(LoadBalancer::RoundRobin)
        );
        assert_eq!(
            merged.for_port(81).load_balancer,
            None,
            "replaced as a whole"
        );
        let inherited = TrafficPolicy::default().merged_over(&rule);
        assert_eq!(
            inherited.for_port(81).load_balancer,
            Some(LoadBalancer::Random)
        );
    }
}
