//! VirtualServices and DestinationRules in the per-Service pass, while they stay unchanged.
//!
//! A Service no VirtualService names (as a host or a destination, resolved as `compile_l7`
//! resolves them) compiles to the same bytes with Istio objects present as the full pass gives
//! it, once its own DestinationRule is applied: the kernel connection limit
//! (`kernel_connection_limits`), the rule's load balancer (`lb::apply_rules`) and, through the
//! routing table's plain-forwarding entry, whether the proxy would take it (`lb::mark_proxy`).
//! Nothing else depends on it: `tcp:` weights, route connection limits and `http:` routes all
//! belong to Services a VirtualService names.
//!
//! What is not scoped ([`Unscoped`]): a changed Service a VirtualService names, a VirtualService
//! with a wildcard host (it names Services that do not exist yet), and a changed Service whose
//! DestinationRule clients of some namespace see differently (`exportTo`, rules of their own
//! namespace): the proxy's per-client chain of such a Service is built from every rule.

use std::collections::BTreeSet;

use meshpath_model::istio::hosts;
use meshpath_model::istio::model::{Action, Destination};
use meshpath_model::{ClusterModel, ObjectRef, Protocol};

use super::{Delta, Unscoped};
use crate::l7::{clusters, rule_scope};
use crate::lb::{self, LbOrigin, ProxyPart, RuleLb};
use crate::Compiled;

/// The Services the VirtualServices of one model name, by namespace/name whether or not such a
/// Service exists (a Service created later under that name is named too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IstioScope {
    named: BTreeSet<ObjectRef>,
}

impl IstioScope {
    /// `Err` when a VirtualService names Services by a wildcard host.
    pub fn new(model: &ClusterModel) -> Result<Self, Unscoped> {
        let mut named = BTreeSet::new();
        for vs in model.virtual_services.values() {
            let ns = &vs.id.namespace;
            for host in &vs.hosts {
                if hosts::is_wildcard(host) {
                    return Err(Unscoped::WildcardHost { vs: vs.id.clone() });
                }
                named.extend(hosts::candidate(host, ns));
            }
            // Delegates are VirtualServices of the model too: their destinations are
            // collected here, resolved in their own namespace as `delegate::merge` does.
            let mut dest = |d: &Destination| {
                // A wildcard destination names no Service (503 `NC`).
                if !hosts::is_wildcard(&d.host) {
                    named.extend(hosts::candidate(&d.host, ns));
                }
            };
            for route in &vs.http {
                if let Action::Route(dests) = &route.action {
                    dests.iter().for_each(|(d, _)| dest(d));
                }
                route.mirrors.iter().for_each(|m| dest(&m.destination));
            }
            for route in &vs.tcp {
                route.route.iter().for_each(|(d, _)| dest(d));
            }
        }
        Ok(Self { named })
    }

    /// Whether the per-Service pass may compile `changed` with these rules: checked before
    /// anything is compiled, so that `Err` leaves every state as it was.
    pub fn check(
        &self,
        model: &ClusterModel,
        changed: &BTreeSet<ObjectRef>,
    ) -> Result<(), Unscoped> {
        for service in changed {
            if self.named.contains(service) {
                return Err(Unscoped::NamedByVirtualService {
                    service: service.clone(),
                });
            }
            if !model.destination_rules.is_empty() && rule_scope::service_rule(model, service).1 {
                return Err(Unscoped::RulePerClient {
                    service: service.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Applies the changed Services' DestinationRules to their new frontends in `compiled` (after
/// [`super::compile_changed`]), as the full pass does without a node proxy:
/// `connection_limits` is whether the kernel enforces DestinationRule connection limits.
pub fn apply_rules(
    model: &ClusterModel,
    compiled: &mut Compiled,
    delta: &Delta,
    connection_limits: bool,
) {
    let rules_present = !model.destination_rules.is_empty();
    for addr in &delta.new {
        let fe = compiled.frontends.get_mut(addr).expect("compiled just now");
        let rule = match rules_present {
            true => rule_scope::service_rule(model, &fe.service).0,
            false => None,
        };
        if connection_limits {
            fe.max_connections =
                rule.and_then(|r| r.traffic_policy.connection_pool.as_ref()?.max_connections);
        }
        let policy = rule.map(|r| r.traffic_policy.for_port(addr.port));
        if let Some(lb) = policy.as_ref().and_then(|p| p.load_balancer.as_ref()) {
            let lb = RuleLb::of(lb);
            fe.lb_origin = LbOrigin::Rule(lb);
            match lb {
                RuleLb::RoundRobin => fe.lb_policy = meshpath_model::LbPolicy::RoundRobin,
                RuleLb::Random => fe.lb_policy = meshpath_model::LbPolicy::Random,
                RuleLb::LeastRequest | RuleLb::ConsistentHash | RuleLb::Passthrough => {}
            }
        }
        // The routing table's entry for an HTTP frontend no VirtualService routes is plain
        // forwarding to its own cluster, whose policy is the rule's for the port: the proxy
        // takes it when that policy is one only the proxy enforces (`lb::steer_reasons`).
        let http = addr.protocol == Protocol::Tcp
            && model.services.get(&fe.service).is_some_and(|s| {
                s.ports
                    .iter()
                    .find(|p| p.port == addr.port && p.protocol == Protocol::Tcp)
                    .is_some_and(clusters::http_capable)
            });
        let wanted = (http
            && lb::policy_needs_proxy(&clusters::policy_to_l7(&policy.unwrap_or_default())))
        .then_some(ProxyPart::Policy);
        fe.proxy = lb::proxy_part(fe, wanted, false);
    }
}
