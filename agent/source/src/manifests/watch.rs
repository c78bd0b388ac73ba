//! Watching the manifests directory and publishing snapshots.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::watch;

use meshpath_model::ClusterModel;

use super::state::{load_dir, Load, ManifestState};
use crate::error::{log_error, SourceError};
use crate::SourceStatus;

/// A rescan waits until no event came for this long, so that a burst (an editor's write, rename
/// and chmod; `kubectl cp` of many files) costs one rescan.
pub const DEBOUNCE: Duration = Duration::from_millis(40);
/// ... but never longer than this after the first event, even if events keep coming.
pub const MAX_DELAY: Duration = Duration::from_millis(150);

enum Msg {
    Fs(notify::Result<notify::Event>),
    Stop,
}

/// Keeps `dir` loaded into a pair of watch channels until dropped.
///
/// The model channel's value is always the union of every file's last good objects; it is only
/// sent to (receivers only see `changed()`) when the model differs from the one before, plus
/// once for the initial load. A watch channel rather than a queue because consumers only ever
/// want the latest model: snapshots they had no time for are skipped, never queued. The status
/// channel carries the current errors and counts and is sent to whenever they change.
///
/// The watcher runs on a thread of its own, so `start` does not need a tokio runtime.
pub struct ManifestWatcher {
    watcher: Option<notify::RecommendedWatcher>,
    stop: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl ManifestWatcher {
    /// Starts watching `dir`, loads it once and publishes the result before returning. Fails
    /// only if `dir` cannot be watched (it does not exist, say); errors in the manifests are in
    /// the status channel and logged.
    pub fn start(
        dir: impl Into<PathBuf>,
        model: watch::Sender<Arc<ClusterModel>>,
        status: watch::Sender<Arc<SourceStatus>>,
    ) -> Result<Self, SourceError> {
        let dir = dir.into();
        let (tx, rx) = mpsc::channel();
        let events = tx.clone();
        let watcher = notify::recommended_watcher(move |event| {
            let _ = events.send(Msg::Fs(event));
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w))
        .map_err(|source| SourceError::Watch {
            dir: dir.clone(),
            source,
        })?;

        let mut publisher = Publisher {
            dir: dir.clone(),
            model,
            status,
            state: ManifestState::default(),
            reported: HashSet::new(),
        };
        publisher.rescan(true);
        let thread = std::thread::Builder::new()
            .name("manifests-watch".into())
            .spawn(move || run(rx, publisher))
            .map_err(|e| SourceError::Watch {
                dir: dir.clone(),
                source: notify::Error::io(e),
            })?;
        Ok(Self {
            watcher: Some(watcher),
            stop: tx,
            thread: Some(thread),
        })
    }
}

impl Drop for ManifestWatcher {
    fn drop(&mut self) {
        self.watcher.take();
        let _ = self.stop.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether an event may mean a manifest changed. Opening and reading a file are events too
/// (inotify's IN_OPEN is in notify's mask): without this filter every rescan would trigger the
/// next.
fn relevant(event: &notify::Result<notify::Event>) -> bool {
    match event {
        Ok(event) => match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        },
        Err(error) => {
            tracing::warn!(%error, "manifests watch error; rescanning");
            true
        }
    }
}

fn run(rx: mpsc::Receiver<Msg>, mut publisher: Publisher) {
    loop {
        match rx.recv() {
            Ok(Msg::Fs(event)) if relevant(&event) => {}
            Ok(Msg::Fs(_)) => continue,
            Ok(Msg::Stop) | Err(_) => return,
        }
        let first = Instant::now();
        let mut last = first;
        loop {
            let now = Instant::now();
            let wait = (last + DEBOUNCE)
                .min(first + MAX_DELAY)
                .saturating_duration_since(now);
            if wait.is_zero() {
                break;
            }
            match rx.recv_timeout(wait) {
                Ok(Msg::Fs(event)) => {
                    if relevant(&event) {
                        last = Instant::now();
                    }
                }
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        publisher.rescan(false);
    }
}

struct Publisher {
    dir: PathBuf,
    model: watch::Sender<Arc<ClusterModel>>,
    status: watch::Sender<Arc<SourceStatus>>,
    state: ManifestState,
    /// The errors of the previous rescan, rendered: only new ones are logged.
    reported: HashSet<String>,
}

impl Publisher {
    fn rescan(&mut self, initial: bool) {
        let Load {
            state,
            model,
            errors,
            files,
            notices: _,
        } = load_dir(&self.dir, &self.state);
        self.state = state;

        let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for (error, text) in errors.iter().zip(&rendered) {
            if !self.reported.contains(text) {
                log_error(error);
            }
        }
        if rendered.is_empty() && !self.reported.is_empty() {
            tracing::info!(dir = %self.dir.display(), "manifest errors resolved");
        }
        self.reported = rendered.into_iter().collect();

        let objects = model.services.len()
            + model.endpoint_slices.len()
            + model.pods.len()
            + model.virtual_services.len()
            + model.destination_rules.len();
        let model_changed = self.model.send_if_modified(|current| {
            if **current == model {
                return initial;
            }
            *current = Arc::new(model);
            true
        });
        if model_changed {
            tracing::info!(dir = %self.dir.display(), files, objects, errors = errors.len(), "manifests loaded");
        }
        let status = SourceStatus {
            errors,
            files,
            objects,
        };
        self.status.send_if_modified(|current| {
            if !initial && current.same_as(&status) {
                return false;
            }
            *current = Arc::new(status);
            true
        });
    }
}

#[cfg(test)]
mod tests;
