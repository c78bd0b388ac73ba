//! `meshpath agent`: source → compile → apply, again on every change, until SIGINT/SIGTERM.
//! The programs stay attached after the agent exits (their links are pinned): traffic keeps
//! flowing through a restart, as with kube-proxy's rules. `meshpath cleanup` removes them.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::apply::apply;
use crate::compile::{compile, Compiled};
use crate::config::AgentConfig;
use crate::datapath::{Datapath, DatapathError, EMBEDDED_OBJECT};
use crate::model::ClusterModel;
use crate::source::{ManifestWatcher, SourceError, SourceStatus};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "this meshpath binary was built without the eBPF object: run `cargo xtask build-ebpf` and \
         rebuild, or pass --bpf-object PATH"
    )]
    NoObject,
    #[error("reading the eBPF object {}", path.display())]
    ReadObject {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("installing the signal handler")]
    Signal(#[source] std::io::Error),
}

pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let owned;
    let object: &[u8] = match &cfg.bpf_object {
        Some(path) => {
            owned = std::fs::read(path).map_err(|source| AgentError::ReadObject {
                path: path.clone(),
                source,
            })?;
            &owned
        }
        None => EMBEDDED_OBJECT.ok_or(AgentError::NoObject)?,
    };
    let mut datapath = Datapath::load(object, &cfg.pin_dir, &cfg.cgroup, cfg.features)?;
    info!(pin_dir = %cfg.pin_dir.display(), cgroup = %cfg.cgroup.display(), features = ?cfg.features, "datapath loaded");

    let (model_tx, mut model_rx) = watch::channel(Arc::new(ClusterModel::default()));
    let (status_tx, _status_rx) = watch::channel(Arc::new(SourceStatus::default()));
    let _watcher = ManifestWatcher::start(&cfg.manifests, model_tx, status_tx)?;
    info!(dir = %cfg.manifests.display(), "watching manifests");

    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let mut compiled = Compiled::default();
    loop {
        let model = model_rx.borrow_and_update().clone();
        let (next, errors) = compile(&model, &cfg.compile, &compiled);
        for e in &errors {
            error!(error = %e, "service not (re)programmed; its last good state stays live");
        }
        let contents = next.map_contents();
        match apply(&mut datapath.maps, &contents) {
            Ok(stats) => {
                info!(
                    frontends = next.frontends.len(),
                    backends = contents.backends.len(),
                    upserts = stats.upserts,
                    deletes = stats.deletes,
                    affinity_purged = stats.affinity_purged,
                    "programmed"
                );
                compiled = next;
            }
            // The next change retries; apply diffs against what the maps really hold.
            Err(e) => {
                error!(error = %e, source = ?std::error::Error::source(&e), "applying to the maps failed")
            }
        }
        tokio::select! {
            changed = model_rx.changed() => if changed.is_err() {
                warn!("manifest watcher stopped");
                break;
            },
            _ = term.recv() => { info!("SIGTERM: exiting; programs stay attached"); break; }
            _ = int.recv() => { info!("SIGINT: exiting; programs stay attached"); break; }
        }
    }
    Ok(())
}
