//! The runtime form of one `L7Config`: routes with compiled matchers, destinations resolved to
//! shared cluster state (endpoints with their pools, balancer tables). Built once per config
//! change; every request holds the `Arc<Snapshot>` it started with, so a swap never disturbs
//! requests in flight.
//!
//! A per-cluster circuit breaker (`ConnectionPool` limits: pending/active requests, retries)
//! belongs in [`ClusterRt`], next to `lb`: counters checked by the admission layer before
//! each attempt and carried across snapshots by cluster key like endpoints are by address.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::breaker::{self, Breaker, StatsMap};
use super::forward::RetryRt;
use super::headers::CompiledOps;
use super::idle::DEFAULT_IDLE_TIMEOUT;
use super::istio_metrics::ClusterLabels;
use super::istio_series::WordHasher;
use super::layers::cors::CorsRt;
use super::lb::LbState;
use super::locality::LocalityRt;
use super::matching::Matcher;
use super::outlier::{OutlierRt, Outliers};
use super::upstream::{Endpoint, Proto, SendOpts};
use super::warmup::SlowStartRt;
mod retired;

use retired::retire;
pub(crate) use retired::{Retired, RETIRED_GRACE};

use meshpath_model::l7::{
    ClusterKey, HttpRoute, L7Config, RouteAction, ServiceRoutes, TrafficPolicy, WeightedCluster,
};

/// Istio's default `connectTimeout`.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Snapshot {
    pub config: Arc<L7Config>,
    /// Looked up once per request by original destination: a word hash, as the keys come
    /// from the config (a client picks which one it asks for, but cannot add colliding ones).
    /// Shared with the next snapshot when neither its routes nor their clusters change.
    pub listeners: HashMap<SocketAddr, Arc<ListenerRt>, BuildHasherDefault<WordHasher>>,
    /// Every defined cluster's state, for the next build to take over what did not change.
    pub clusters: HashMap<ClusterKey, Arc<ClusterRt>>,
    /// Listeners a config dropped (their frontend stopped being steered here), for a grace
    /// period ([`RETIRED_GRACE`] by default): a connection the kernel steered here just before it wrote the change
    /// still gets its Service's plain forwarding (see [`ListenerRt::plain`]).
    pub retired: HashMap<SocketAddr, Retired, BuildHasherDefault<WordHasher>>,
}

pub(crate) struct ListenerRt {
    /// The VirtualService routes, in order.
    pub routes: Vec<RouteRt>,
    /// Used when `routes` is empty: everything to `default_cluster`.
    pub default_route: RouteRt,
    /// `exportTo`: the client namespaces these routes are for (`None`: all), and what the
    /// other clients get.
    pub export_to: Option<std::collections::BTreeSet<String>>,
    pub otherwise: Option<Box<ListenerRt>>,
}

impl ListenerRt {
    /// Plain forwarding to the listener's own Service (its catch-all route), for a client the
    /// listener was dropped under: its frontend is not steered here any more, so its routes no
    /// longer apply, but the connection still reached the proxy.
    pub(crate) fn plain(&self, namespace: Option<&str>) -> &RouteRt {
        &self.for_client(namespace).default_route
    }

    /// The routes for a client in `namespace` (`None`: not a known pod): the first of the
    /// chain exported to it.
    pub(crate) fn for_client(&self, namespace: Option<&str>) -> &ListenerRt {
        let mut l = self;
        loop {
            let visible = match &l.export_to {
                None => true,
                Some(to) => namespace.is_some_and(|ns| to.contains(ns)),
            };
            match (&l.otherwise, visible) {
                (Some(next), false) => l = next,
                _ => return l,
            }
        }
    }
}

/// A cluster's key, interned when a snapshot is built: requests share it (and the names and
/// metric labels derived from it) by pointer instead of copying its strings.
#[derive(Clone, Debug)]
pub(crate) struct ClusterId(Arc<Interned>);

#[derive(Debug)]
struct Interned {
    key: ClusterKey,
    /// Envoy's cluster name (`outbound|port|subset|host`), for spans and stats.
    envoy_name: Arc<str>,
    labels: ClusterLabels,
}

impl ClusterId {
    pub(crate) fn new(key: &ClusterKey) -> ClusterId {
        ClusterId(Arc::new(Interned {
            key: key.clone(),
            envoy_name: breaker::envoy_cluster_name(key).into(),
            labels: ClusterLabels::of(key),
        }))
    }

    pub(crate) fn envoy_name(&self) -> &Arc<str> {
        &self.0.envoy_name
    }

    /// Istio's `destination_service*` labels of the cluster.
    pub(crate) fn labels(&self) -> &ClusterLabels {
        &self.0.labels
    }
}

impl std::ops::Deref for ClusterId {
    type Target = ClusterKey;
    fn deref(&self) -> &ClusterKey {
        &self.0.key
    }
}

impl PartialEq<ClusterKey> for ClusterId {
    fn eq(&self, other: &ClusterKey) -> bool {
        self.0.key == *other
    }
}

/// A route's destination; `cluster` is `None` when the config names a cluster it does not
/// define (Envoy: 503, cluster not found).
#[derive(Clone)]
pub(crate) struct Dest {
    pub key: ClusterId,
    pub cluster: Option<Arc<ClusterRt>>,
    /// The destination's own header operations (`route[].headers`), if it has any.
    pub ops: Option<Arc<DestOps>>,
}

/// `route[].headers`, compiled once per snapshot; applied before the route's own.
#[derive(Debug, Default)]
pub(crate) struct DestOps {
    pub req: CompiledOps,
    pub resp: CompiledOps,
}

pub(crate) struct RouteRt {
    pub route: HttpRoute,
    /// One per `route.matches`, same order.
    pub matchers: Vec<Matcher>,
    /// Destinations with weight > 0 and their cumulative weights.
    pub dests: Vec<(Dest, u32)>,
    pub total_weight: u32,
    /// Mirrors with a percentage above 0, each rolled on its own.
    pub mirrors: Vec<(Dest, f64)>,
    pub retry: RetryRt,
    pub req_ops: CompiledOps,
    pub resp_ops: CompiledOps,
    /// A direct response's status and body, built once.
    pub direct: Option<(http::StatusCode, bytes::Bytes)>,
    pub cors: Option<CorsRt>,
}

impl RouteRt {
    /// A destination drawn by weight.
    pub(crate) fn choose(&self) -> Option<&Dest> {
        match self.dests.len() {
            0 => None,
            1 => Some(&self.dests[0].0),
            _ => {
                let r = fastrand::u32(..self.total_weight);
                self.dests.iter().find(|(_, cum)| r < *cum).map(|(d, _)| d)
            }
        }
    }
}

pub(crate) struct ClusterRt {
    pub key: ClusterId,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub policy: TrafficPolicy,
    pub lb: LbState,
    pub connect_timeout: Duration,
    /// `connectionPool` limits and the cluster's stats.
    pub breaker: Breaker,
    /// `outlierDetection`, when the policy has it: balancers skip its ejected endpoints.
    pub outlier: Option<OutlierRt>,
    /// `warmup`, while endpoints that joined later are (or were) warming.
    pub slow_start: Option<SlowStartRt>,
    /// `localityLbSetting`, when it ranks or weighs this cluster's endpoints.
    pub locality: Option<LocalityRt>,
}

impl ClusterRt {
    /// Send settings for this cluster's connections.
    pub(crate) fn send_opts(&self, proto: Proto, max_idle: usize) -> SendOpts {
        let pool = &self.policy.connection_pool;
        SendOpts {
            proto,
            connect_timeout: self.connect_timeout,
            max_idle,
            max_requests_per_connection: pool.max_requests_per_connection.unwrap_or(0),
            max_connections: pool.max_connections.unwrap_or(u32::MAX),
            // Istio: 0s turns the timeout off.
            idle_timeout: match pool.idle_timeout {
                None => DEFAULT_IDLE_TIMEOUT,
                Some(t) if t.is_zero() => Duration::MAX,
                Some(t) => t,
            },
        }
    }
}

pub(crate) fn cluster_name(key: &ClusterKey) -> String {
    let view = meshpath_model::l7::RuleView::suffix(key.view.as_ref());
    match &key.subset {
        Some(s) => format!("{}:{}/{}{view}", key.service, key.port, s),
        None => format!("{}:{}{view}", key.service, key.port),
    }
}

/// Endpoint state by cluster and address, weakly held so that it lives exactly as long as some
/// snapshot lists it: a config swap keeps pools and in-flight counts. Each cluster has its own
/// pools (as Envoy's), so its connections can be counted and capped (`maxConnections`).
/// Passthrough destinations are in no snapshot: the proxy keeps them apart.
pub(crate) type Registry = HashMap<(Option<ClusterKey>, SocketAddr), Weak<Endpoint>>;

/// The endpoint's state in `cluster`, created when new; `joins` records a new one's join time
/// (it joins a cluster the proxy already had, for slow start).
fn cluster_endpoint(
    registry: &mut Registry,
    cluster: Option<(&ClusterKey, &Arc<breaker::ClusterStats>)>,
    addr: SocketAddr,
    joins: bool,
) -> Arc<Endpoint> {
    let key = (cluster.map(|(k, _)| k.clone()), addr);
    if let Some(ep) = registry.get(&key).and_then(Weak::upgrade) {
        return ep;
    }
    let ep = Arc::new(Endpoint::new(addr, cluster.map(|(_, s)| s.clone())));
    if joins {
        let _ = ep.joined.set(std::time::Instant::now());
    }
    registry.insert(key, Arc::downgrade(&ep));
    ep
}

/// The snapshot of `config`. A cluster whose definition is the same in `previous` (and, when
/// its balancing depends on it, the node's locality too) is taken over whole: its balancer
/// state, breaker, interned names and metric labels stay as they were, so a routing-only change
/// (a VirtualService edit) rebuilds only the routes.
pub(crate) fn build(
    config: Arc<L7Config>,
    previous: Option<(&Snapshot, Duration)>,
    registry: &mut Registry,
    stats: &mut StatsMap,
    outliers: &Arc<Outliers>,
) -> Snapshot {
    registry.retain(|_, w| w.strong_count() > 0);
    let (previous, grace) = match previous {
        Some((p, grace)) => (Some(p), grace),
        None => (None, RETIRED_GRACE),
    };
    let mut clusters: HashMap<&ClusterKey, Arc<ClusterRt>> =
        HashMap::with_capacity(config.clusters.len());
    let mut taken_over: std::collections::HashSet<&ClusterKey> = Default::default();
    // Both tables are ordered by key: walked side by side, each cluster meets its previous
    // definition after a comparison or two instead of a tree search (at 10 000 clusters the
    // searches' string comparisons were most of a rebuild).
    let mut before = previous.map(|p| p.config.clusters.iter().peekable());
    for (key, c) in &config.clusters {
        let old = before.as_mut().and_then(|it| {
            while it.peek().is_some_and(|(k, _)| *k < key) {
                it.next();
            }
            it.peek().filter(|(k, _)| *k == key).map(|(_, old)| *old)
        });
        if let Some(same) = previous.and_then(|p| unchanged(p, &config, key, c, old)) {
            // Its stats entry is there already: it was made when the cluster was first built,
            // and entries outlive snapshots.
            clusters.insert(key, same);
            taken_over.insert(key);
            continue;
        }
        let addrs: Vec<SocketAddr> = c.endpoints.iter().map(|e| e.addr).collect();
        // Stats outlive snapshots: a cluster they know is one the proxy already had.
        let known = stats.contains_key(key);
        let st = breaker::stats_for(stats, key);
        let endpoints: Vec<Arc<Endpoint>> = addrs
            .iter()
            .map(|a| cluster_endpoint(registry, Some((key, &st)), *a, known))
            .collect();
        let slow_start = c.policy.slow_start.as_ref().and_then(|p| {
            SlowStartRt::new(
                p,
                endpoints.iter().map(|e| e.joined.get().copied()).collect(),
            )
        });
        let locality = c.policy.locality_lb.as_ref().and_then(|l| {
            let od = c.policy.outlier_detection.as_ref();
            LocalityRt::new(
                l,
                od.is_some(),
                od.map_or(0, |o| o.min_health_percent),
                &config.locality,
                &c.endpoints,
            )
        });
        let rt = ClusterRt {
            locality,
            key: ClusterId::new(key),
            endpoints,
            lb: LbState::build(&c.policy.load_balancer, &addrs),
            connect_timeout: c
                .policy
                .connection_pool
                .connect_timeout
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            outlier: c
                .policy
                .outlier_detection
                .clone()
                .map(|policy| OutlierRt::new(key.clone(), policy, st.clone(), outliers)),
            breaker: Breaker::new(st, &c.policy.connection_pool),
            policy: c.policy.clone(),
            slow_start,
        };
        clusters.insert(key, Arc::new(rt));
    }
    let dest = |key: &ClusterKey| match clusters.get(key) {
        Some(c) => Dest {
            key: c.key.clone(),
            cluster: Some(c.clone()),
            ops: None,
        },
        // Not defined: its name is interned for the 503's metrics and span alone.
        None => Dest {
            key: ClusterId::new(key),
            cluster: None,
            ops: None,
        },
    };
    // A listener whose routes are the same and whose clusters were all taken over (or are
    // undefined in both) is taken over too: a change to one Service's endpoints rebuilds its
    // own listener, not the other 10 000.
    let reused = |addr: &SocketAddr, sr: &Arc<ServiceRoutes>| -> Option<Arc<ListenerRt>> {
        let p = previous?;
        let old = p.config.listeners.get(addr)?;
        if !(Arc::ptr_eq(old, sr) || old == sr) {
            return None;
        }
        let same = cluster_refs(sr).into_iter().all(|k| {
            taken_over.contains(k) || (!clusters.contains_key(k) && !p.clusters.contains_key(k))
        });
        same.then(|| p.listeners.get(addr).cloned()).flatten()
    };
    let listeners = config
        .listeners
        .iter()
        .map(|(addr, sr)| {
            let rt = reused(addr, sr).unwrap_or_else(|| Arc::new(listener(sr, &dest)));
            (*addr, rt)
        })
        .collect();
    let clusters = clusters.into_iter().map(|(k, c)| (k.clone(), c)).collect();
    let retired = previous
        .map(|p| retire(p, &config, std::time::Instant::now(), grace))
        .unwrap_or_default();
    Snapshot {
        config: config.clone(),
        listeners,
        clusters,
        retired,
    }
}

/// `previous`'s state of cluster `key` when `c` defines it as `previous` did (`old`, its
/// definition there).
fn unchanged(
    previous: &Snapshot,
    config: &L7Config,
    key: &ClusterKey,
    c: &Arc<meshpath_model::l7::Cluster>,
    old: Option<&Arc<meshpath_model::l7::Cluster>>,
) -> Option<Arc<ClusterRt>> {
    if !old.is_some_and(|old| meshpath_model::l7::same_cluster(old, c)) {
        return None;
    }
    if c.policy.locality_lb.is_some() && previous.config.locality != config.locality {
        return None;
    }
    previous.clusters.get(key).cloned()
}

/// Every cluster a listener's routes (its chain's included) send or mirror to.
fn cluster_refs(sr: &ServiceRoutes) -> Vec<&ClusterKey> {
    let mut out = vec![&sr.default_cluster];
    for r in &sr.http {
        if let RouteAction::Route(wcs) = &r.action {
            out.extend(wcs.iter().map(|w| &w.cluster));
        }
        out.extend(r.mirrors.iter().map(|m| &m.cluster));
    }
    if let Some(next) = &sr.export.otherwise {
        out.extend(cluster_refs(next));
    }
    out
}

fn listener(sr: &ServiceRoutes, dest: &impl Fn(&ClusterKey) -> Dest) -> ListenerRt {
    // A service without routes is plain forwarding to itself: one catch-all route, so it gets
    // the same defaults (Istio's retry policy, no timeout) as any route.
    let default = HttpRoute {
        name: Some("default".into()),
        action: RouteAction::Route(vec![WeightedCluster::new(sr.default_cluster.clone(), 100)]),
        ..HttpRoute::default()
    };
    ListenerRt {
        routes: sr.http.iter().map(|r| route_rt(r, dest)).collect(),
        default_route: route_rt(&default, dest),
        export_to: sr.export.to.clone(),
        otherwise: sr
            .export
            .otherwise
            .as_ref()
            .map(|next| Box::new(listener(next, dest))),
    }
}

pub(crate) fn route_rt(r: &HttpRoute, dest: &impl Fn(&ClusterKey) -> Dest) -> RouteRt {
    let mut dests = Vec::new();
    let mut total = 0u32;
    if let RouteAction::Route(wcs) = &r.action {
        // Istio drops zero weights when there are several destinations, and a lone
        // destination gets all traffic whatever its weight.
        let lone = wcs.len() == 1;
        for wc in wcs.iter().filter(|wc| lone || wc.weight > 0) {
            total = total.saturating_add(if lone { 1 } else { wc.weight });
            let mut d = dest(&wc.cluster);
            let none = |h: &meshpath_model::l7::HeaderOps| {
                h.set.is_empty() && h.add.is_empty() && h.remove.is_empty()
            };
            if !none(&wc.request_headers) || !none(&wc.response_headers) {
                d.ops = Some(Arc::new(DestOps {
                    req: CompiledOps::compile(&wc.request_headers),
                    resp: CompiledOps::compile(&wc.response_headers),
                }));
            }
            dests.push((d, total));
        }
    }
    let direct = match &r.action {
        RouteAction::DirectResponse { status, body } => Some((
            http::StatusCode::from_u16(*status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
            body.as_deref()
                .map(bytes::Bytes::copy_from_slice)
                .unwrap_or_default(),
        )),
        _ => None,
    };
    RouteRt {
        matchers: r.matches.iter().map(Matcher::compile).collect(),
        dests,
        total_weight: total,
        mirrors: r
            .mirrors
            .iter()
            .filter(|m| m.percentage > 0.0)
            .map(|m| (dest(&m.cluster), m.percentage))
            .collect(),
        direct,
        retry: RetryRt::from_policy(r.retries.as_ref()),
        req_ops: CompiledOps::compile(&r.request_headers),
        resp_ops: CompiledOps::compile(&r.response_headers),
        cors: r.cors.as_ref().map(CorsRt::compile),
        route: r.clone(),
    }
}
