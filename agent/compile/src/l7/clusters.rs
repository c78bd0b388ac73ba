//! What the routing table's clusters are made of: the DestinationRule of each Service, the
//! frontends of a Service, and a cluster's endpoints (the backends `compile` chose, with their
//! Pods' labels, narrowed to a subset) and merged traffic policy.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};

use meshpath_model::istio::model::{self as im, DestinationRule};
use meshpath_model::l7::{self, Cluster, ClusterKey, Endpoint, RuleView};
use meshpath_model::{ClusterModel, Locality, ObjectRef, Protocol, ServicePort};

use super::rule_scope::Scopes;
use crate::{Compiled, Frontend, FrontendAddr};

/// Istio protocol prefixes of port names (`<protocol>[-<suffix>]`) that are not HTTP: such ports
/// are never handed to the HTTP proxy. Unnamed ports and other names are assumed HTTP, as Istio
/// assumes after sniffing (meshpath has no sniffing on the kernel path).
const NOT_HTTP: &[&str] = &["tcp", "tls", "https", "mongo", "mysql", "redis", "udp"];

pub struct Ctx<'a> {
    model: &'a ClusterModel,
    frontends: BTreeMap<&'a ObjectRef, Vec<(FrontendAddr, &'a Frontend)>>,
    scopes: Scopes<'a>,
    pods_by_ip: HashMap<Ipv4Addr, &'a BTreeMap<String, String>>,
    slices: meshpath_model::SliceIndex<'a>,
}

impl<'a> Ctx<'a> {
    pub fn new(model: &'a ClusterModel, compiled: &'a Compiled) -> Self {
        let mut frontends: BTreeMap<&ObjectRef, Vec<_>> = BTreeMap::new();
        for (addr, fe) in &compiled.frontends {
            frontends.entry(&fe.service).or_default().push((*addr, fe));
        }
        let pods_by_ip = model
            .pods
            .values()
            .filter_map(|p| Some((p.ip?, &p.labels)))
            .collect();
        Self {
            model,
            frontends,
            scopes: Scopes::new(model),
            pods_by_ip,
            slices: meshpath_model::SliceIndex::new(model),
        }
    }

    /// As [`Ctx::new`], for `services` only, with `frontends` their frontends as a per-Service
    /// pass compiled them (`incremental::Plan::fresh`): what their clusters need and no more.
    pub fn for_services(
        model: &'a ClusterModel,
        frontends: &'a [(FrontendAddr, Frontend)],
        services: &std::collections::BTreeSet<ObjectRef>,
    ) -> Self {
        let mut by_service: BTreeMap<&ObjectRef, Vec<_>> = BTreeMap::new();
        let mut ips = std::collections::HashSet::new();
        for (addr, fe) in frontends {
            by_service.entry(&fe.service).or_default().push((*addr, fe));
            ips.extend(fe.backends.iter().map(|b| b.ip));
        }
        // The same winner as `new` where two Pods claim one IP: the model's order, filtered.
        let pods_by_ip = model
            .pods
            .values()
            .filter_map(|p| Some((p.ip?, &p.labels)))
            .filter(|(ip, _)| ips.contains(ip))
            .collect();
        Self {
            model,
            frontends: by_service,
            scopes: Scopes::new(model),
            pods_by_ip,
            slices: meshpath_model::SliceIndex::for_services(model, services),
        }
    }

    pub fn model(&self) -> &'a ClusterModel {
        self.model
    }

    /// The DestinationRule of each Service clients without a view of their own see.
    pub fn rules(&self) -> impl Iterator<Item = (&ObjectRef, &'a DestinationRule)> + '_ {
        self.scopes.default_rules()
    }

    pub fn rule(&self, service: &ObjectRef) -> Option<&'a DestinationRule> {
        self.scopes.default_rule(service)
    }

    pub fn scopes(&self) -> &Scopes<'a> {
        &self.scopes
    }

    /// The rule a cluster follows: its view's, else the default.
    fn rule_of(&self, key: &ClusterKey) -> Option<&'a DestinationRule> {
        match &key.view {
            None => self.rule(&key.service),
            Some(RuleView::NoRule) => None,
            Some(RuleView::Rule(id)) => self.model.destination_rules.get(id),
        }
    }

    /// The TCP frontends of `service`, each with whether it may carry HTTP.
    pub fn tcp_frontends(&self, service: &ObjectRef) -> Vec<(FrontendAddr, bool)> {
        let ports = self
            .model
            .services
            .get(service)
            .map(|s| s.ports.as_slice())
            .unwrap_or_default();
        self.frontends
            .get(service)
            .into_iter()
            .flatten()
            .filter(|(addr, _)| addr.protocol == Protocol::Tcp)
            .map(|(addr, _)| {
                let port = ports
                    .iter()
                    .find(|p| p.port == addr.port && p.protocol == Protocol::Tcp);
                (*addr, port.is_some_and(http_capable))
            })
            .collect()
    }

    pub fn http_frontends(
        &self,
        service: &ObjectRef,
    ) -> impl Iterator<Item = (FrontendAddr, bool)> {
        self.tcp_frontends(service)
            .into_iter()
            .filter(|(_, http)| *http)
    }

    /// The cluster `key` names, or `None` when its subset is not defined (any more) or its
    /// Service does not exist.
    pub fn cluster(&self, key: &ClusterKey) -> Option<Cluster> {
        // A wildcard destination's key names no Service: no cluster (503 `NC`).
        if !self.model.services.contains_key(&key.service) {
            return None;
        }
        let rule = self.rule_of(key);
        let base = rule.map(|r| r.traffic_policy.clone()).unwrap_or_default();
        let (labels, policy) = match &key.subset {
            None => (None, base),
            Some(name) => {
                let subset = rule?.subsets.iter().find(|s| &s.name == name)?;
                (
                    Some(&subset.labels),
                    subset.traffic_policy.merged_over(&base),
                )
            }
        };
        let all = self.endpoints(&key.service, key.port);
        let total = all.len();
        let endpoints: Vec<Endpoint> = match labels {
            None => all,
            Some(wanted) => all
                .into_iter()
                .filter(|e| wanted.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
                .collect(),
        };
        if endpoints.is_empty() && total > 0 {
            tracing::warn!(service = %key.service, port = key.port, subset = key.subset.as_deref(),
                endpoints = total, "subset labels select none of the service's endpoints");
        }
        Some(Cluster {
            endpoints,
            // `portLevelSettings` for the cluster's port, over the (subset's) policy.
            policy: policy_to_l7(&policy.for_port(key.port)),
        })
    }

    /// The backends `compile` chose for the service port, with the labels of their Pods (found by
    /// the EndpointSlice's `targetRef`, else by Pod IP).
    fn endpoints(&self, service: &ObjectRef, port: u16) -> Vec<Endpoint> {
        let Some((_, fe)) = self
            .frontends
            .get(service)
            .into_iter()
            .flatten()
            .find(|(addr, _)| addr.port == port && addr.protocol == Protocol::Tcp)
        else {
            return Vec::new();
        };
        let mut by_target_ref: HashMap<Ipv4Addr, &BTreeMap<String, String>> = HashMap::new();
        let mut localities: HashMap<Ipv4Addr, Locality> = HashMap::new();
        for slice in self.slices.slices_for(service) {
            for ep in &slice.endpoints {
                let locality = self.locality_of(ep);
                if !locality.is_empty() {
                    localities.extend(ep.addresses.iter().map(|ip| (*ip, locality.clone())));
                }
                let Some(pod) = &ep.pod_name else { continue };
                if let Some(pod) = self
                    .model
                    .pods
                    .get(&ObjectRef::new(&service.namespace, pod))
                {
                    by_target_ref.extend(ep.addresses.iter().map(|ip| (*ip, &pod.labels)));
                }
            }
        }
        fe.backends
            .iter()
            .map(|b| {
                let labels = by_target_ref
                    .get(&b.ip)
                    .or_else(|| self.pods_by_ip.get(&b.ip));
                Endpoint {
                    addr: SocketAddr::from((b.ip, b.port)),
                    labels: labels.map(|l| (*l).clone()).unwrap_or_default(),
                    locality: localities.get(&b.ip).cloned().unwrap_or_default(),
                }
            })
            .collect()
    }
}

impl Ctx<'_> {
    /// An endpoint's locality: its node's labels, else the zone its EndpointSlice gives.
    fn locality_of(&self, ep: &meshpath_model::Endpoint) -> Locality {
        let node = ep
            .node_name
            .as_deref()
            .and_then(|n| self.model.nodes.values().find(|node| node.name == n));
        let mut locality = node.map(|n| n.locality.clone()).unwrap_or_default();
        if locality.zone.is_empty() {
            locality.zone = ep.zone.clone().unwrap_or_default();
        }
        locality
    }
}

/// The locality of node `name`, for the proxy that runs there (empty when unknown).
pub fn node_locality(model: &ClusterModel, name: Option<&str>) -> Locality {
    name.and_then(|n| model.nodes.values().find(|node| node.name == n))
        .map(|n| n.locality.clone())
        .unwrap_or_default()
}

/// A port Istio would treat as HTTP (see [`NOT_HTTP`]).
pub(crate) fn http_capable(port: &ServicePort) -> bool {
    let name = port
        .name
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let protocol = name.split('-').next().unwrap_or_default();
    port.protocol == Protocol::Tcp && !NOT_HTTP.contains(&protocol)
}

pub fn policy_to_l7(p: &im::TrafficPolicy) -> l7::TrafficPolicy {
    let load_balancer = match &p.load_balancer {
        None | Some(im::LoadBalancer::RoundRobin) => l7::LoadBalancer::RoundRobin,
        Some(im::LoadBalancer::LeastRequest) => l7::LoadBalancer::LeastRequest,
        Some(im::LoadBalancer::Random) => l7::LoadBalancer::Random,
        Some(im::LoadBalancer::Passthrough) => l7::LoadBalancer::Passthrough,
        Some(im::LoadBalancer::ConsistentHash { key, algorithm }) => {
            l7::LoadBalancer::ConsistentHash {
                key: match key {
                    im::HashKey::Header(h) => l7::HashKey::Header(h.clone()),
                    im::HashKey::Cookie { name, path, ttl } => l7::HashKey::Cookie {
                        name: name.clone(),
                        path: path.clone(),
                        ttl: *ttl,
                    },
                    im::HashKey::SourceIp => l7::HashKey::SourceIp,
                    im::HashKey::QueryParameter(q) => l7::HashKey::QueryParameter(q.clone()),
                },
                algorithm: match *algorithm {
                    im::HashAlgorithm::RingHash { minimum_ring_size } => {
                        l7::HashAlgorithm::RingHash { minimum_ring_size }
                    }
                    im::HashAlgorithm::Maglev { table_size } => {
                        l7::HashAlgorithm::Maglev { table_size }
                    }
                },
            }
        }
    };
    let pool = p.connection_pool.clone().unwrap_or_default();
    // Envoy's slow start applies to round robin and least request only.
    let slow_start = p
        .warmup
        .as_ref()
        .filter(|_| {
            matches!(
                load_balancer,
                l7::LoadBalancer::RoundRobin | l7::LoadBalancer::LeastRequest
            )
        })
        .map(|w| l7::SlowStart {
            window: w.duration,
            min_weight: w.minimum_percent.0 / 100.0,
            aggression: w.aggression.0,
        });
    // Istio's default when not written: enabled, no settings.
    let locality_lb = match &p.locality {
        None => Some(l7::LocalityLb::default()),
        Some(l) => l.enabled.then(|| l.settings.clone()),
    };
    l7::TrafficPolicy {
        locality_lb,
        load_balancer,
        connection_pool: l7::ConnectionPool {
            max_connections: pool.max_connections,
            connect_timeout: pool.connect_timeout,
            http1_max_pending_requests: pool.http1_max_pending_requests,
            http2_max_requests: pool.http2_max_requests,
            max_requests_per_connection: pool.max_requests_per_connection,
            max_retries: pool.max_retries,
            idle_timeout: pool.idle_timeout,
        },
        slow_start,
        outlier_detection: p.outlier_detection.as_ref().map(|o| l7::OutlierDetection {
            consecutive_5xx_errors: o.consecutive_5xx_errors,
            consecutive_gateway_errors: o.consecutive_gateway_errors,
            interval: o.interval,
            base_ejection_time: o.base_ejection_time,
            max_ejection_percent: o.max_ejection_percent,
            min_health_percent: o.min_health_percent,
        }),
    }
}
