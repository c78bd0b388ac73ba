//! Resetting the managed pods' kernel-path connections that a reconcile invalidated
//! (`meshpath_compile::conn_reset`), off the reconcile loop: each pass runs on its own OS thread
//! (`meshpath_datapath::conn_reset` enters the pods' namespaces on a thread of its own) and
//! counts what it reset by reason.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use meshpath_compile::conn_reset::ConnResets;
use meshpath_datapath::conn_reset::reset_connections;
use meshpath_datapath::netns::NetnsId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

/// Why a connection was reset: the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The service gained rules only the node proxy applies.
    ServiceSteered,
    /// The backend left every kernel-path service.
    BackendRemoved,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ServiceSteered => "service_steered",
            Reason::BackendRemoved => "backend_removed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// `meshpath_connections_reset_total{reason}`.
#[derive(Clone, Default)]
pub struct ConnResetMetrics {
    reset: Family<ReasonLabel, Counter>,
}

impl ConnResetMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "meshpath_connections_reset",
            "Kernel-path TCP connections of managed pods reset after a rule change, by reason",
            self.reset.clone(),
        );
    }

    fn add(&self, reason: Reason, n: u64) {
        let label = ReasonLabel {
            reason: reason.as_str().to_owned(),
        };
        self.reset.get_or_create(&label).inc_by(n);
    }
}

/// Where to look for the connections, and where not.
#[derive(Clone)]
pub struct ConnResetter {
    cgroup: PathBuf,
    /// The agent's own namespace and the proxy's: the proxy's upstream connections are its
    /// own business (it drains them by its own rules).
    exclude: BTreeSet<NetnsId>,
    metrics: ConnResetMetrics,
}

impl ConnResetter {
    pub fn new(cgroup: &Path, proxy_netns: Option<&Path>, metrics: ConnResetMetrics) -> Self {
        let mut exclude = BTreeSet::new();
        for path in [Some(Path::new("/proc/self/ns/net")), proxy_netns]
            .into_iter()
            .flatten()
        {
            match NetnsId::of(path) {
                Ok(id) => {
                    exclude.insert(id);
                }
                Err(error) => warn!(%error, "namespace not excluded from connection resets"),
            }
        }
        Self {
            cgroup: cgroup.to_owned(),
            exclude,
            metrics,
        }
    }

    /// Resets the connections of `plan` in the background.
    pub fn reset(&self, plan: ConnResets) {
        if plan.is_empty() {
            return;
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("conn-reset-pass".into())
            .spawn(move || this.run(&plan));
        if let Err(error) = spawned {
            warn!(%error, "connections not reset: no thread");
        }
    }

    fn run(&self, plan: &ConnResets) {
        let peers: BTreeSet<SocketAddrV4> =
            plan.steered.union(&plan.backend_removed).copied().collect();
        match reset_connections(&self.cgroup, &self.exclude, &peers) {
            Ok(outcome) if outcome.namespaces == 0 => warn!(
                cgroup = %self.cgroup.display(),
                peers = peers.len(),
                "connections not reset: no process of the managed cgroups is visible in another network namespace (the agent needs the host's PID namespace)"
            ),
            Ok(outcome) => {
                for error in &outcome.errors {
                    let source = std::error::Error::source(error).map(ToString::to_string);
                    warn!(%error, source = source.as_deref().unwrap_or(""), "a namespace's connections not reset");
                }
                let (mut steered, mut removed) = (0, 0);
                for (peer, n) in &outcome.reset {
                    let reason = if plan.steered.contains(peer) {
                        steered += n;
                        Reason::ServiceSteered
                    } else {
                        removed += n;
                        Reason::BackendRemoved
                    };
                    self.metrics.add(reason, *n);
                }
                info!(
                    namespaces = outcome.namespaces,
                    peers = peers.len(),
                    service_steered = steered,
                    backend_removed = removed,
                    "connections reset after a rule change"
                );
            }
            Err(error) => {
                let source = std::error::Error::source(&error).map(ToString::to_string);
                warn!(%error, source = source.as_deref().unwrap_or(""), "connections not reset");
            }
        }
    }
}
