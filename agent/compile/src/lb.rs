//! Where each frontend's load-balancing policy is enforced, and why.
//!
//! A DestinationRule's `trafficPolicy.loadBalancer` (the Service-wide one, or the port's
//! `portLevelSettings` entry's) applies to the Service's frontends:
//! - `ROUND_ROBIN`, `RANDOM`: the kernel's own selection (`SVC_FLAG_ROUND_ROBIN` or not), over
//!   the Service's `meshpath.io/lb-policy` annotation and the agent's default;
//! - `LEAST_REQUEST`/`LEAST_CONN`, `consistentHash`: per request, so the frontend is steered to
//!   the proxy (`l7::needs_proxy`), on HTTP ports; a non-HTTP port stays with the kernel and
//!   `meshpath status` says the policy is not enforced there;
//! - `PASSTHROUGH` (Istio: connect to the address the client asked for, no balancing): for a
//!   ClusterIP that address is the virtual IP itself, which no pod owns; under Istio the
//!   connection would then be translated by kube-proxy. The kernel translation is meshpath's
//!   kube-proxy, so the frontend keeps the Service's own policy (annotation, else the agent's
//!   default) and no mesh balancing applies. Connections to a pod IP are never translated.
//!
//! Subset policies apply where the subset is routed to: `http:` routes go through the proxy,
//! which balances each subset by its merged policy.
//!
//! Also here: HTTP ports whose Service has no ready endpoint, which the proxy answers 503
//! "no healthy upstream" like Envoy instead of the kernel refusing the connection.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use meshpath_common::policy as code;
use meshpath_model::istio::model::LoadBalancer;
use meshpath_model::l7::L7Config;
use meshpath_model::{ClusterModel, LbPolicy, Protocol};

use crate::{Compiled, Frontend, FrontendAddr};

/// Where a frontend's policy comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LbOrigin {
    /// The agent's `--default-lb-policy`.
    #[default]
    Default,
    /// The Service's `meshpath.io/lb-policy` annotation.
    Annotation,
    /// The Service's DestinationRule.
    Rule(RuleLb),
}

/// A DestinationRule's `loadBalancer`, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleLb {
    RoundRobin,
    Random,
    LeastRequest,
    ConsistentHash,
    Passthrough,
}

/// Whether the node proxy handles a frontend, and why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProxyPart {
    /// The kernel balances it.
    #[default]
    None,
    /// VirtualService `http:` routes.
    Routes,
    /// A DestinationRule policy only the proxy enforces.
    Policy,
    /// An HTTP port without ready endpoints: the proxy answers 503.
    NoEndpoint,
    /// Needs the proxy but is not steered (no proxy, or no free listener port).
    Unavailable,
    /// Its policy needs the proxy, which takes HTTP ports only.
    NotHttp,
}

impl RuleLb {
    pub(crate) fn of(lb: &LoadBalancer) -> RuleLb {
        match lb {
            LoadBalancer::RoundRobin => RuleLb::RoundRobin,
            LoadBalancer::Random => RuleLb::Random,
            LoadBalancer::LeastRequest => RuleLb::LeastRequest,
            LoadBalancer::ConsistentHash { .. } => RuleLb::ConsistentHash,
            LoadBalancer::Passthrough => RuleLb::Passthrough,
        }
    }

    /// Whether balancing by it takes the proxy (per request).
    pub fn needs_proxy(self) -> bool {
        matches!(self, RuleLb::LeastRequest | RuleLb::ConsistentHash)
    }
}

/// The `loadBalancer` of each frontend's Service's DestinationRule, where one is written: the
/// port's `portLevelSettings` entry's, else the Service-wide one.
pub fn rule_policies(model: &ClusterModel, compiled: &Compiled) -> BTreeMap<FrontendAddr, RuleLb> {
    let ctx = crate::l7::clusters::Ctx::new(model, compiled);
    compiled
        .frontends
        .iter()
        .filter_map(|(addr, fe)| {
            let rule = ctx.rule(&fe.service)?;
            let policy = rule.traffic_policy.for_port(addr.port);
            Some((*addr, RuleLb::of(policy.load_balancer.as_ref()?)))
        })
        .collect()
}

/// Applies [`rule_policies`] to the frontends: the kernel's selection for `ROUND_ROBIN` and
/// `RANDOM`, and the origin of every frontend's policy.
pub fn apply_rules(compiled: &mut Compiled, rules: &BTreeMap<FrontendAddr, RuleLb>) {
    for (addr, fe) in compiled.frontends.iter_mut() {
        let Some(&lb) = rules.get(addr) else {
            continue;
        };
        fe.lb_origin = LbOrigin::Rule(lb);
        match lb {
            RuleLb::RoundRobin => fe.lb_policy = LbPolicy::RoundRobin,
            RuleLb::Random => fe.lb_policy = LbPolicy::Random,
            // The proxy balances these (or the kernel keeps the Service's own policy).
            RuleLb::LeastRequest | RuleLb::ConsistentHash | RuleLb::Passthrough => {}
        }
    }
}

/// TCP frontends on a declared-HTTP port (`ServicePort::declared_http`) with no ready endpoint.
pub fn http_without_endpoints(model: &ClusterModel, compiled: &Compiled) -> BTreeSet<FrontendAddr> {
    compiled
        .frontends
        .iter()
        .filter(|(addr, fe)| http_without_endpoint(model, addr, fe))
        .map(|(addr, _)| *addr)
        .collect()
}

/// One frontend of [`http_without_endpoints`].
pub(crate) fn http_without_endpoint(
    model: &ClusterModel,
    addr: &FrontendAddr,
    fe: &Frontend,
) -> bool {
    addr.protocol == Protocol::Tcp
        && fe.backends.is_empty()
        && model.services.get(&fe.service).is_some_and(|s| {
            s.ports
                .iter()
                .any(|p| p.port == addr.port && p.declared_http())
        })
}

/// Records on each frontend whether the proxy handles it: `wanted` are the frontends that need
/// it (with why), `steered` those that got a proxy listener.
pub fn mark_proxy(
    compiled: &mut Compiled,
    wanted: &BTreeMap<FrontendAddr, ProxyPart>,
    steered: &BTreeSet<FrontendAddr>,
) {
    for (addr, fe) in compiled.frontends.iter_mut() {
        fe.proxy = proxy_part(fe, wanted.get(addr).copied(), steered.contains(addr));
    }
}

/// [`mark_proxy`] for one frontend: `wanted` is why it needs the proxy, if it does.
pub(crate) fn proxy_part(fe: &Frontend, wanted: Option<ProxyPart>, steered: bool) -> ProxyPart {
    match wanted {
        Some(_) if !steered => ProxyPart::Unavailable,
        Some(why) => why,
        None if matches!(fe.lb_origin, LbOrigin::Rule(lb) if lb.needs_proxy()) => {
            ProxyPart::NotHttp
        }
        None => ProxyPart::None,
    }
}

/// `l7::needs_proxy`, with why each frontend needs the proxy.
pub fn steer_reasons(config: &L7Config) -> BTreeMap<FrontendAddr, ProxyPart> {
    config
        .listeners
        .iter()
        .filter_map(|(addr, routes)| {
            // Every entry of the chain (clients see different routes and rules) counts.
            let chain = std::iter::successors(Some(&**routes), |r| r.export.otherwise.as_deref());
            let mut why = ProxyPart::None;
            for r in chain {
                if !r.http.is_empty() {
                    why = ProxyPart::Routes;
                    break;
                }
                // Only the proxy tells clients apart; the kernel would give all the same.
                let per_client = r.export.to.is_some();
                if per_client
                    || config
                        .clusters
                        .get(&r.default_cluster)
                        .is_some_and(|c| policy_needs_proxy(&c.policy))
                {
                    why = ProxyPart::Policy;
                }
            }
            if why == ProxyPart::None {
                return None;
            }
            match addr.ip() {
                IpAddr::V4(ip) => Some((
                    FrontendAddr {
                        ip,
                        port: addr.port(),
                        protocol: Protocol::Tcp,
                    },
                    why,
                )),
                IpAddr::V6(_) => None,
            }
        })
        .collect()
}

/// What `istio::model::TrafficPolicy::needs_proxy` decides, on the merged routing-table policy.
pub(crate) fn policy_needs_proxy(p: &meshpath_model::l7::TrafficPolicy) -> bool {
    use meshpath_model::l7::LoadBalancer as Lb;
    let lb = matches!(
        p.load_balancer,
        Lb::LeastRequest | Lb::ConsistentHash { .. }
    );
    let pool = &p.connection_pool;
    let http_pool = pool.http1_max_pending_requests.is_some()
        || pool.http2_max_requests.is_some()
        || pool.max_requests_per_connection.is_some()
        || pool.max_retries.is_some()
        || pool.idle_timeout.is_some();
    // `slow_start` is only set for the balancers it applies to; locality weights are drawn
    // per request.
    let distribute = p
        .locality_lb
        .as_ref()
        .is_some_and(|l| !l.distribute.is_empty());
    lb || http_pool || distribute || p.outlier_detection.is_some() || p.slow_start.is_some()
}

/// The `ServiceValue::policy` byte of a frontend (see `meshpath_common::policy`).
pub fn policy_code(fe: &Frontend) -> u8 {
    let lb = match fe.lb_origin {
        LbOrigin::Default => code::LB_DEFAULT,
        LbOrigin::Annotation => code::LB_ANNOTATION,
        LbOrigin::Rule(RuleLb::RoundRobin) => code::LB_ROUND_ROBIN,
        LbOrigin::Rule(RuleLb::Random) => code::LB_RANDOM,
        LbOrigin::Rule(RuleLb::LeastRequest) => code::LB_LEAST_REQUEST,
        LbOrigin::Rule(RuleLb::ConsistentHash) => code::LB_CONSISTENT_HASH,
        LbOrigin::Rule(RuleLb::Passthrough) => code::LB_PASSTHROUGH,
    };
    let proxy = match fe.proxy {
        ProxyPart::None => code::PROXY_NONE,
        ProxyPart::Routes => code::PROXY_ROUTES,
        ProxyPart::Policy => code::PROXY_POLICY,
        ProxyPart::NoEndpoint => code::PROXY_NO_ENDPOINT,
        ProxyPart::Unavailable => code::PROXY_UNAVAILABLE,
        ProxyPart::NotHttp => code::PROXY_NOT_HTTP,
    };
    lb | proxy
}

#[cfg(test)]
mod tests;
