//! One pass of the agent: model → `compile` (frontends, backends) → `compile_l7` (proxy routing
//! table) → steering (which frontends go to the proxy, on which listener) → `apply` (maps). The
//! proxy's listeners open before the maps point at them and close after the maps moved away.

use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info, warn};

use meshpath_compile::l7::{compile_l7, kernel_connection_limits, L7Compiled};
use meshpath_compile::lb::{self, steer_reasons, ProxyPart};
use meshpath_compile::limits::{route_limits, RouteLimits};
use meshpath_compile::steer::ProxyPorts;
use meshpath_compile::{compile, CompileOptions, Compiled, FrontendAddr};
use meshpath_datapath::apply::apply;
use meshpath_datapath::DatapathMaps;
use meshpath_model::l7::L7Config;
use meshpath_model::ClusterModel;

use crate::proxy_listeners::ProxyListeners;

mod publisher;
mod recompile;
mod scoped;

pub use recompile::RecompileReport;

/// Where the node proxy listens; `None` keeps every service on the kernel path.
pub struct ProxySetup {
    pub ip: Ipv4Addr,
    pub ports: (u16, u16),
    /// Steer HTTP ports without ready endpoints to the proxy, which answers 503.
    pub http_no_endpoint_503: bool,
    pub listeners: ProxyListeners,
    pub fail_closed: meshpath_compile::steer::FailClosed,
}

pub struct Reconciler {
    opts: CompileOptions,
    /// Whether the running datapath enforces connection limits (`--connection-limits`; sock_ops
    /// releases counted sockets only then). Off: no limit reaches the maps at all, so connect4
    /// counts nothing that could never be released.
    connection_limits: bool,
    proxy: Option<ProxySetup>,
    l7_tx: watch::Sender<Arc<L7Config>>,
    compiled: Compiled,
    l7: L7Compiled,
    ports: ProxyPorts,
    /// Connection-limit groups of route destinations, with their stable ids.
    limits: RouteLimits,
    /// Endpoints the proxy's `outlierDetection` ejected, kept out of the maps (`meshpath_compile::ejection`).
    ejected: meshpath_proxy::EjectedSet,
    /// What the last successful apply wrote: the next one diffs against it instead of reading
    /// the maps back. `None` at start and after a failed apply, which then reads the maps.
    applied: Option<meshpath_compile::MapContents>,
    /// The DNS proxy, when DNS capture is on (`crate::dns`).
    dns: Option<crate::dns::DnsServer>,
    /// Socket redirection's opt-in scope: the opted-in pod addresses last written (`None`:
    /// scope not in use, or the map must be read back).
    redirect_pods: Option<std::collections::BTreeSet<Ipv4Addr>>,
    redirect_opt_in: bool,
    /// Resets the kernel-path connections a change invalidates (`--reset-connections`).
    conn_reset: Option<crate::conn_reset::ConnResetter>,
    /// Backends off the kernel path whose connections wait until no slice lists them.
    reset_pending: std::collections::BTreeSet<std::net::SocketAddrV4>,
    /// The tc path's frontends, when it is on.
    tc: Option<crate::tc_path::TcPath>,
    /// What the per-Service pass needs (`scoped`); `None` until a full pass leaves a state it
    /// can continue from.
    scoped: Option<scoped::ScopedState>,
    /// With the node proxy: publishes the per-Service passes' routing-table changes.
    publisher: Option<publisher::TablePublisher>,
}

impl Reconciler {
    pub fn new(
        opts: CompileOptions,
        connection_limits: bool,
        proxy: Option<ProxySetup>,
        l7_tx: watch::Sender<Arc<L7Config>>,
    ) -> Self {
        let publisher = proxy
            .as_ref()
            .map(|_| publisher::TablePublisher::start(l7_tx.clone()));
        Self {
            opts,
            connection_limits,
            proxy,
            l7_tx,
            compiled: Compiled::default(),
            l7: L7Compiled::default(),
            ports: ProxyPorts::default(),
            limits: RouteLimits::default(),
            ejected: Default::default(),
            applied: None,
            dns: None,
            redirect_pods: None,
            redirect_opt_in: false,
            conn_reset: None,
            reset_pending: Default::default(),
            tc: None,
            scoped: None,
            publisher,
        }
    }

    /// Programs NodePorts, external and load-balancer IPs for the tc path from the next
    /// reconcile on.
    pub fn with_tc(mut self, tc: Option<crate::tc_path::TcPath>) -> Self {
        self.tc = tc;
        self
    }

    /// Keeps the kernel's set of opted-in pods (`meshpath.io/socket-redirect`) in step with
    /// the model, for socket redirection's opt-in scope.
    pub fn with_redirect_opt_in(mut self, on: bool) -> Self {
        self.redirect_opt_in = on;
        self
    }

    /// Resets the kernel-path connections each applied change invalidates, through `resetter`.
    pub fn with_conn_reset(mut self, resetter: Option<crate::conn_reset::ConnResetter>) -> Self {
        self.conn_reset = resetter;
        self
    }

    /// Captures the pods' DNS queries through `dns` from the next reconcile on.
    pub fn with_dns(mut self, dns: Option<crate::dns::DnsServer>) -> Self {
        self.dns = dns;
        self
    }

    /// The proxy's current ejections, applied from the next [`Reconciler::reconcile`].
    pub fn set_ejected(&mut self, ejected: meshpath_proxy::EjectedSet) {
        self.ejected = ejected;
    }

    /// The proxy's listeners, to drain them on the way out.
    pub fn proxy_listeners(&mut self) -> Option<&mut ProxyListeners> {
        self.proxy.as_mut().map(|p| &mut p.listeners)
    }

    pub fn reconcile(&mut self, model: &ClusterModel, maps: &mut DatapathMaps) {
        self.redirect_scope(model, maps);
        match self.reconcile_scoped(model, maps) {
            Ok(()) => return,
            Err(why) => tracing::debug!(why, "compiling every Service"),
        }
        self.reconcile_full(model, maps);
    }

    /// Compiles, renders and writes everything; what the write changed, when it succeeded.
    fn reconcile_full(
        &mut self,
        model: &ClusterModel,
        maps: &mut DatapathMaps,
    ) -> Option<meshpath_datapath::apply::ApplyStats> {
        self.scoped = None;
        let started = std::time::Instant::now();
        let (mut next, errors) = compile(model, &self.opts, &self.compiled);
        let compiled_at = started.elapsed();
        for e in &errors {
            error!(error = %e, "service not (re)programmed; its last good state stays live");
        }
        // `--connection-limits false`: no limit reaches the maps, service-wide or per route
        // destination, so connect4 counts nothing (sock_ops, which releases, may be detached).
        // Without DestinationRules there is no limit nor policy to apply, and without them,
        // VirtualServices and a proxy the routing table has nothing for the kernel: skipped, as
        // at 10 000 Services it costs as much as the compile.
        let rules_present = !model.destination_rules.is_empty();
        let l7_needed = self.proxy.is_some() || rules_present || !model.virtual_services.is_empty();
        if self.connection_limits {
            // Set on every frontend, also to none: a service's last good frontends keep the
            // limit of a rule that may be gone now.
            let limits = match rules_present {
                true => kernel_connection_limits(model, &next),
                false => Default::default(),
            };
            for fe in next.frontends.values_mut() {
                fe.max_connections = limits.get(&fe.service).copied();
            }
        }
        if rules_present {
            let rules = lb::rule_policies(model, &next);
            lb::apply_rules(&mut next, &rules);
        }
        let (mut l7, l7_errors) = if l7_needed {
            compile_l7(model, &next, &self.l7)
        } else {
            (L7Compiled::default(), Vec::new())
        };
        l7.config.locality =
            meshpath_compile::l7::node_locality(model, self.opts.node_name.as_deref());
        let l7_at = started.elapsed();
        for e in &l7_errors {
            if e.is_warning() {
                warn!(warning = %e, "route to a destination not defined yet");
            } else {
                error!(error = %e, "routing not (re)applied; its last good state stays live");
            }
        }
        let route_limits = if self.connection_limits {
            let (limits, errors) = route_limits(&l7, &next, &self.limits);
            for e in &errors {
                error!(error = %e, "connection limit not applied");
            }
            limits
        } else {
            RouteLimits::default()
        };

        let mut wanted = steer_reasons(&l7.config);
        if self.proxy.as_ref().is_some_and(|p| p.http_no_endpoint_503) {
            for addr in lb::http_without_endpoints(model, &next) {
                // The proxy serves it from its plain-forwarding entry (an empty cluster).
                let socket = std::net::SocketAddr::from((addr.ip, addr.port));
                if l7.config.listeners.contains_key(&socket) {
                    wanted.entry(addr).or_insert(ProxyPart::NoEndpoint);
                }
            }
        }
        let steered: std::collections::BTreeSet<FrontendAddr> = wanted.keys().copied().collect();
        let ports = match self.proxy.as_mut() {
            Some(p) => {
                let (assigned, out_of_ports) = self.ports.assign(&steered, p.ports);
                for e in &out_of_ports {
                    warn!(error = %e, "frontend not steered to the proxy");
                }
                p.listeners.update_pods(model);
                // The proxy serves the new table before any connection can be steered to it:
                // built here, off its request path, and only when the routing really changed
                // (a pass for an outlier ejection or a kernel-only change publishes nothing).
                if let Some(publisher) = &self.publisher {
                    publisher.pause();
                }
                if let Some(config) = publish_if_changed(&self.l7_tx, &l7.config) {
                    p.listeners.apply_l7(config);
                }
                if let Some(publisher) = &self.publisher {
                    publisher.rebase(self.l7_tx.borrow().clone());
                }
                p.listeners.open_missing(&assigned).0
            }
            None => {
                if !steered.is_empty() {
                    warn!(frontends = steered.len(), "L7 rules present but no --proxy-ip: those services stay on the kernel path");
                }
                ProxyPorts::default()
            }
        };
        let targets = self
            .proxy
            .as_ref()
            .map(|p| ports.targets(p.ip))
            .unwrap_or_default();
        lb::mark_proxy(&mut next, &wanted, &targets.keys().copied().collect());
        let ejected = meshpath_compile::ejection::ejected_ips(&l7.config, &self.ejected);
        let weighted = meshpath_compile::tcp_weights::tcp_weights(&l7, &next, &ejected);
        // Filtered in a copy: `next` stays the compile step's memory (ids, last good state).
        let healthy = meshpath_compile::ejection::exclude_ejected(&next, &ejected);
        let rendered_from = healthy.as_ref().unwrap_or(&next);
        let fail_closed = self
            .proxy
            .as_ref()
            .map(|p| p.fail_closed.clone())
            .unwrap_or_default();
        let mut contents = rendered_from.map_contents_steered(&targets, &weighted, &fail_closed);
        route_limits.render(&mut contents, rendered_from, &weighted);
        // Listeners open (and names swapped in) before the maps steer queries to them.
        let dns_steering = match self.dns.as_mut() {
            Some(dns) => dns.update(model, &next),
            None => crate::dns::DnsSteering::default(),
        };
        crate::dns::render(&mut contents, &dns_steering, self.opts.max_frontends);
        let rendered_at = started.elapsed();
        if contents.services.len() > self.opts.max_service_entries as usize {
            // Written anyway, the batch would fail part-way with E2BIG.
            error!(
                entries = contents.services.len(),
                capacity = self.opts.max_service_entries,
                "the service map cannot hold every frontend and its backend slots (--max-service-entries): nothing written; the last programmed state stays live"
            );
            return None;
        }
        match apply(maps, &contents, self.applied.as_ref()) {
            Ok(stats) => {
                // Where a reconcile's time goes (cumulative µs since it started).
                tracing::debug!(
                    compile_us = compiled_at.as_micros() as u64,
                    l7_us = l7_at.as_micros() as u64,
                    rendered_us = rendered_at.as_micros() as u64,
                    applied_us = started.elapsed().as_micros() as u64,
                    "reconcile timing"
                );
                info!(
                    frontends = next.frontends.len(),
                    backends = contents.backends.len(),
                    steered = targets.len(),
                    dns_resolvers = dns_steering.by_resolver.len(),
                    upserts = stats.upserts,
                    deletes = stats.deletes,
                    members_added = stats.members_added,
                    members_removed = stats.members_removed,
                    limit_groups = route_limits.groups.len(),
                    "programmed"
                );
                if let Some(p) = self.proxy.as_mut() {
                    p.listeners.close_unused(&ports);
                }
                if let Some(dns) = self.dns.as_mut() {
                    dns.close_unused(&dns_steering);
                }
                // The maps send new connects the new way; now the old ones may go.
                if let Some(resetter) = &self.conn_reset {
                    let mut plan = meshpath_compile::conn_reset::conn_resets(
                        &self.compiled,
                        &self.ports.by_frontend.keys().copied().collect(),
                        &next,
                        &ports.by_frontend.keys().copied().collect(),
                        &meshpath_compile::conn_reset::listed_ips(model),
                        &self.reset_pending,
                    );
                    self.reset_pending = std::mem::take(&mut plan.pending);
                    resetter.reset(plan);
                }
                if let Some(tc) = &self.tc {
                    tc.sync(model, &next, maps);
                }
                // The per-Service pass continues from here when nothing global is in play.
                // `tcp:` weights and route limits belong to Services VirtualServices name,
                // and steered frontends stay as they are, which the per-Service pass leaves to
                // this one.
                let plain = self.needs_full().is_none()
                    && errors.is_empty()
                    && next.allocated_ips.is_empty();
                let rules = meshpath_compile::incremental::istio::IstioScope::new(model);
                self.scoped = match (&model.changes, plain, rules) {
                    (Some(changes), true, Ok(rules)) => Some(scoped::ScopedState {
                        seq: changes.seq,
                        ids: meshpath_compile::incremental::State::new(&next, &self.opts),
                        rules,
                        pod_ips: match self.proxy {
                            Some(_) => meshpath_compile::incremental::l7::PodIps::new(model),
                            None => Default::default(),
                        },
                    }),
                    (_, _, Err(e)) => {
                        tracing::debug!(reason = %e, "the next change compiles every Service too");
                        None
                    }
                    _ => None,
                };
                self.compiled = next;
                self.l7 = l7;
                self.ports = ports;
                self.limits = route_limits;
                self.applied = Some(contents);
                Some(stats)
            }
            // The next change retries; apply diffs against what the maps really hold.
            Err(e) => {
                self.applied = None;
                error!(error = %e, source = ?std::error::Error::source(&e), "applying to the maps failed");
                None
            }
        }
    }
}

impl Reconciler {
    fn redirect_scope(&mut self, model: &ClusterModel, maps: &mut DatapathMaps) {
        if !self.redirect_opt_in {
            return;
        }
        let wanted = meshpath_compile::redirect::opted_in_pod_ips(model);
        if self.redirect_pods.as_ref() == Some(&wanted) {
            return;
        }
        match meshpath_datapath::redirect_scope::write_pods(maps, &wanted) {
            Ok((added, removed)) => {
                info!(
                    opted_in = wanted.len(),
                    added, removed, "socket redirection: opted-in pods"
                );
                self.redirect_pods = Some(wanted);
            }
            Err(e) => {
                self.redirect_pods = None;
                error!(error = %e, source = ?std::error::Error::source(&e), "opted-in pods not written; retried on the next change");
            }
        }
    }
}

/// Publishes `config` on `tx` when it differs from the value there; returns what was published.
fn publish_if_changed(
    tx: &watch::Sender<Arc<L7Config>>,
    config: &L7Config,
) -> Option<Arc<L7Config>> {
    let mut published = None;
    tx.send_if_modified(|cur| {
        if **cur == *config {
            return false;
        }
        *cur = Arc::new(config.clone());
        published = Some(cur.clone());
        true
    });
    published
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_routing_table_is_not_published_again() {
        let (tx, rx) = watch::channel(Arc::new(L7Config::default()));
        assert!(publish_if_changed(&tx, &L7Config::default()).is_none());
        assert!(!rx.has_changed().unwrap());
        let mut changed = L7Config::default();
        changed.clusters.insert(
            meshpath_model::l7::ClusterKey {
                service: meshpath_model::ObjectRef::new("default", "svc"),
                port: 80,
                subset: None,
                view: None,
            },
            meshpath_model::l7::Cluster {
                endpoints: vec![],
                policy: Default::default(),
            }
            .into(),
        );
        assert!(publish_if_changed(&tx, &changed).is_some());
        assert!(rx.has_changed().unwrap());
        // A pass that rebuilt an equal table (e.g. for an outlier ejection): nothing new.
        assert!(publish_if_changed(&tx, &changed.clone()).is_none());
    }
}
