//! The Kubernetes source (`meshpath agent --source kube`): kube-rs watchers for Services,
//! EndpointSlices, Pods, and Istio VirtualServices/DestinationRules, feeding the same
//! [`ClusterModel`] as the manifests source. Compile and apply are shared.
//!
//! - [`watch`]: one task per kind (list + watch, relist and backoff on errors);
//! - [`objects`]: API objects → model objects, with the manifests source's conversions;
//! - [`aggregate`]: the objects received so far, last good versions, atomic relists;
//! - [`lifecycle`]: whether a stopping agent is replaced or uninstalled (its DaemonSet's fate);
//! - this module: the client, the tasks, and the publisher that coalesces bursts of events into
//!   one snapshot (an endpoint storm rebuilds the maps once per burst, not once per event).
//!
//! Nothing is published before every kind has been listed once, so an agent restarting on a
//! node with programmed maps keeps them until it knows the whole cluster state; during API
//! server outages the last published model simply stays.

pub mod aggregate;
pub mod lifecycle;
mod objects;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::sync::{mpsc, watch as channel};
use tokio::task::JoinHandle;
use tracing::info;

use meshpath_model::ClusterModel;

use self::aggregate::Aggregate;
use self::watch::Msg;
use crate::error::{log_error, ObjectKind, SourceError};
use crate::SourceStatus;

/// Settings of the Kubernetes source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeOptions {
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, else the in-cluster service
    /// account (as kubectl and client-go look).
    pub kubeconfig: Option<PathBuf>,
    /// How long the publisher waits after the first event of a burst for more before it
    /// publishes one snapshot of them all.
    pub debounce: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("reading kubeconfig {}", path.display())]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("using kubeconfig {}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("finding the Kubernetes API (KUBECONFIG, ~/.kube/config, in-cluster service account)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("creating the Kubernetes client")]
    Client(#[source] kube::Error),
}

/// The running source; its tasks stop when it is dropped.
pub struct KubeSource {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl KubeSource {
    /// Connects (lazily: the first request is made by the watchers) and starts watching. The
    /// model channel is sent to once every kind has been listed, then on every change.
    pub async fn start(
        options: &KubeOptions,
        model: channel::Sender<Arc<ClusterModel>>,
        status: channel::Sender<Arc<SourceStatus>>,
        metrics: crate::sync_metrics::SyncMetrics,
    ) -> Result<Self, KubeSourceError> {
        let client = client(options).await?;
        let errors = metrics.watch_errors.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = vec![
            tokio::spawn(watch::run(
                Api::<core::Service>::all(client.clone()),
                ObjectKind::Service,
                tx.clone(),
                errors.clone(),
                objects::service,
            )),
            tokio::spawn(watch::run(
                Api::<discovery::EndpointSlice>::all(client.clone()),
                ObjectKind::EndpointSlice,
                tx.clone(),
                errors.clone(),
                objects::endpoint_slice,
            )),
            tokio::spawn(watch::run(
                Api::<core::Pod>::all(client.clone()),
                ObjectKind::Pod,
                tx.clone(),
                errors.clone(),
                objects::pod,
            )),
            tokio::spawn(watch::run(
                Api::<core::Namespace>::all(client.clone()),
                ObjectKind::Namespace,
                tx.clone(),
                errors.clone(),
                objects::namespace,
            )),
            // For the locality of endpoints and of this node (`localityLbSetting`).
            tokio::spawn(watch::run(
                Api::<core::Node>::all(client.clone()),
                ObjectKind::Node,
                tx.clone(),
                errors.clone(),
                objects::node,
            )),
        ];
        for kind in [ObjectKind::VirtualService, ObjectKind::DestinationRule] {
            tasks.push(tokio::spawn(watch::run_istio(
                client.clone(),
                kind,
                tx.clone(),
                errors.clone(),
                watch::ISTIO_DISCOVERY_INTERVAL,
            )));
        }
        drop(tx);
        let publisher = Publisher {
            rx,
            model,
            status,
            debounce: options.debounce,
            aggregate: Aggregate::default(),
            published_once: false,
            changes: meshpath_model::Changes::default(),
            started: Instant::now(),
            metrics,
            held: Vec::new(),
        };
        tasks.push(tokio::spawn(publisher.run()));
        Ok(Self { tasks })
    }
}

async fn client(options: &KubeOptions) -> Result<Client, KubeSourceError> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| KubeSourceError::ReadKubeconfig {
                    path: path.clone(),
                    source,
                })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeSourceError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None => Config::infer().await.map_err(KubeSourceError::Infer)?,
    };
    info!(url = %config.cluster_url, "Kubernetes API");
    Client::try_from(config).map_err(KubeSourceError::Client)
}

struct Publisher {
    rx: mpsc::UnboundedReceiver<Msg>,
    model: channel::Sender<Arc<ClusterModel>>,
    status: channel::Sender<Arc<SourceStatus>>,
    debounce: Duration,
    aggregate: Aggregate,
    published_once: bool,
    /// The change sets of the recent snapshots, carried by the next one.
    changes: meshpath_model::Changes,
    started: Instant,
    metrics: crate::sync_metrics::SyncMetrics,
    /// Events that arrived while a reader (the agent, mid-pass) held the published snapshot,
    /// in order: applied once it lets go, since editing a held snapshot copies the whole model
    /// (tens of milliseconds at 10 000 Services, more than the pass it waited for).
    held: Vec<Msg>,
}

/// How long held events wait for the readers to let go of the snapshot before the publisher
/// copies it after all (a reader that keeps it, e.g. a slow metrics scrape).
const HOLD_LIMIT: Duration = Duration::from_millis(100);
/// How often the publisher looks whether the snapshot was let go (tokio's timer rounds this
/// up to its 1 ms tick).
const HOLD_POLL: Duration = Duration::from_micros(250);

impl Publisher {
    async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let oldest = first.at;
            let mut events = 1usize;
            self.apply(first);
            // Coalesce: everything that arrives within `debounce` of the first event (and
            // whatever queued up meanwhile) goes into the same snapshot.
            let deadline = tokio::time::Instant::from_std(oldest + self.debounce);
            loop {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(msg)) => {
                        events += 1;
                        self.apply(msg);
                    }
                    Ok(None) => return,
                    Err(_elapsed) => break,
                }
            }
            while let Ok(msg) = self.rx.try_recv() {
                events += 1;
                self.apply(msg);
            }
            events += self.apply_held().await;
            self.publish(oldest, events);
        }
    }

    fn apply(&mut self, msg: Msg) {
        self.metrics.events.inc();
        if let aggregate::Change::Apply(aggregate::Item { result: Err(e), .. })
        | aggregate::Change::InitApply(aggregate::Item { result: Err(e), .. }) = &msg.change
        {
            // The last good version of the object (if any) stays programmed.
            log_error(e);
        }
        if !self.held.is_empty() || self.snapshot_held() {
            self.held.push(msg);
            return;
        }
        self.with_published(false, |a| a.apply(msg.kind, msg.change));
    }

    /// Whether the model changed since it was last published.
    fn dirty(&self) -> bool {
        self.aggregate.dirty()
    }

    /// Whether someone besides the channel holds the published snapshot.
    fn snapshot_held(&self) -> bool {
        self.published_once && Arc::strong_count(&self.model.borrow()) > 1
    }

    /// Applies the held events once the snapshot is let go (or [`HOLD_LIMIT`] passed), with
    /// the events that arrive meanwhile; returns how many of those there were. Waits too when
    /// nothing is held but the snapshot is, and the model changed: publishing stamps it, which
    /// would copy it as well (the agent may have taken it between an event and its publishing).
    async fn apply_held(&mut self) -> usize {
        let mut more = 0;
        if self.held.is_empty() && !(self.dirty() && self.snapshot_held()) {
            return more;
        }
        let since = Instant::now();
        while self.snapshot_held() && since.elapsed() < HOLD_LIMIT {
            tokio::time::sleep(HOLD_POLL).await;
            while let Ok(msg) = self.rx.try_recv() {
                more += 1;
                self.apply(msg);
            }
        }
        if self.snapshot_held() {
            tracing::debug!(
                held = self.held.len(),
                "snapshot still held: the model is copied"
            );
        }
        for msg in std::mem::take(&mut self.held) {
            self.with_published(false, |a| a.apply(msg.kind, msg.change));
        }
        more
    }

    /// Runs `f` on the aggregate holding the published snapshot's model, so that its edits
    /// happen in place (under the channel's lock, without waking receivers until `notify`)
    /// instead of in a copy per snapshot: at 10 000 Services that copy costs more than
    /// compiling a change. The model is copied only when the agent still holds the snapshot.
    fn with_published<R>(&mut self, notify: bool, f: impl FnOnce(&mut Aggregate) -> R) -> R {
        if !self.published_once {
            return f(&mut self.aggregate);
        }
        let aggregate = &mut self.aggregate;
        let mut out = None;
        self.model.send_if_modified(|published| {
            std::mem::swap(aggregate.model_arc(), published);
            out = Some(f(aggregate));
            std::mem::swap(aggregate.model_arc(), published);
            notify
        });
        out.expect("send_if_modified runs its closure")
    }

    fn publish(&mut self, oldest: Instant, events: usize) {
        if !self.aggregate.synced() {
            return;
        }
        let errors: Vec<SourceError> = self
            .aggregate
            .errors()
            .filter_map(SourceError::try_clone)
            .collect();
        let status = SourceStatus {
            errors,
            files: 0,
            objects: self.with_published(false, |a| a.objects()),
        };
        if !self.status.borrow().same_as(&status) {
            self.status.send_replace(Arc::new(status));
        }
        if !self.aggregate.take_dirty() && self.published_once {
            return;
        }
        // The first snapshot has no predecessor: whatever the aggregate noted before it is moot.
        let set = self.aggregate.take_changes();
        self.changes = self.changes.next(set);
        let changes = self.changes.clone();
        self.metrics.snapshots.inc();
        if self.published_once {
            tracing::debug!(events, "Kubernetes changes coalesced into one snapshot");
            self.with_published(true, |a| {
                let m = Arc::make_mut(a.model_arc());
                m.received = Some(oldest);
                m.changes = Some(changes);
            });
            return;
        }
        // From now on the model lives in the channel (see `with_published`).
        let mut model = std::mem::take(self.aggregate.model_arc());
        let m = Arc::make_mut(&mut model);
        m.received = Some(oldest);
        m.changes = Some(changes);
        info!(
            services = m.services.len(),
            endpoint_slices = m.endpoint_slices.len(),
            pods = m.pods.len(),
            virtual_services = m.virtual_services.len(),
            destination_rules = m.destination_rules.len(),
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "Kubernetes state listed"
        );
        self.published_once = true;
        self.model.send_replace(model);
    }
}

#[cfg(test)]
mod tests;
