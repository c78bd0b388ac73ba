//! Hands the node proxy the routing-table changes of per-Service passes, off the reconcile
//! path. Such a pass changes entries of Services the proxy is not taking (their plain
//! forwarding, for connections it still holds), so they need not reach it before the maps are
//! written; copying a 10 000-Service table per change would cost the pass far more than the
//! change itself. A thread keeps its own copy of the table, applies the patches it is sent, and
//! publishes the result on the proxy's channel at most once per [`PUBLISH_INTERVAL`], so a
//! burst of changes costs one copy and one rebuild of the proxy's snapshot.
//!
//! The full pass publishes itself, synchronously, before it steers anything: it first waits
//! for this thread to stop ([`TablePublisher::pause`]), so that no older table can be
//! published after its own, then hands it the published table as the new base.

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshpath_compile::incremental::l7::L7Patch;
use meshpath_model::l7::L7Config;
use meshpath_model::ObjectRef;
use tokio::sync::watch;

/// The longest a per-Service pass's routing change waits before it is published.
pub(super) const PUBLISH_INTERVAL: Duration = Duration::from_millis(200);

enum Msg {
    Patch(L7Patch, BTreeSet<ObjectRef>),
    /// Publish nothing until the next base; acknowledged once nothing is being published.
    Pause(mpsc::SyncSender<()>),
    Base(Arc<L7Config>),
}

pub(super) struct TablePublisher {
    tx: mpsc::Sender<Msg>,
}

impl TablePublisher {
    pub fn start(channel: watch::Sender<Arc<L7Config>>) -> Self {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("l7-publisher".into())
            .spawn(move || run(&rx, &channel, PUBLISH_INTERVAL));
        if let Err(e) = spawned {
            // Patches then go nowhere and the table follows the full passes only.
            tracing::error!(error = %e, "routing-table publisher not started");
        }
        Self { tx }
    }

    /// Queues `patch` (of the Services in `changed`) for the next publication.
    pub fn patch(&self, patch: L7Patch, changed: BTreeSet<ObjectRef>) {
        let _ = self.tx.send(Msg::Patch(patch, changed));
    }

    /// Returns once the thread publishes nothing until [`TablePublisher::rebase`].
    pub fn pause(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Pause(ack)).is_ok() {
            let _ = done.recv();
        }
    }

    /// The table the full pass published: later patches apply to it.
    pub fn rebase(&self, table: Arc<L7Config>) {
        let _ = self.tx.send(Msg::Base(table));
    }
}

fn run(rx: &mpsc::Receiver<Msg>, channel: &watch::Sender<Arc<L7Config>>, interval: Duration) {
    let mut table: Option<L7Config> = None;
    let mut dirty = false;
    let mut last = Instant::now() - interval;
    loop {
        let msg = if dirty {
            let wait = (last + interval).saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(msg) => Some(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(msg) => Some(msg),
                Err(_) => return,
            }
        };
        match msg {
            Some(Msg::Patch(patch, changed)) => {
                if let Some(table) = table.as_mut() {
                    patch.apply(table, &changed);
                    dirty = true;
                }
            }
            Some(Msg::Pause(ack)) => {
                table = None;
                dirty = false;
                let _ = ack.send(());
            }
            Some(Msg::Base(base)) => table = Some((*base).clone()),
            None => {}
        }
        if dirty && last.elapsed() >= interval {
            if let Some(table) = &table {
                let started = Instant::now();
                channel.send_replace(Arc::new(table.clone()));
                tracing::debug!(
                    copy_us = started.elapsed().as_micros() as u64,
                    "routing table published"
                );
            }
            dirty = false;
            last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_model::l7::{Cluster, ClusterKey};

    fn table(names: &[&str]) -> L7Config {
        let mut c = L7Config::default();
        for name in names {
            let key = ClusterKey::new(ObjectRef::new("default", *name), 80, None);
            let cluster = Cluster {
                endpoints: vec![],
                policy: Default::default(),
            };
            c.clusters.insert(key, cluster.into());
        }
        c
    }

    /// An empty patch of `name`: its entries leave the table.
    fn remove(publisher: &TablePublisher, name: &str) {
        let changed = BTreeSet::from([ObjectRef::new("default", name)]);
        publisher.patch(L7Patch::default(), changed);
    }

    fn wait_for(rx: &watch::Receiver<Arc<L7Config>>, want: &L7Config) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while **rx.borrow() != *want {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    #[test]
    fn patches_are_published_on_the_base_and_never_while_paused() {
        let (channel, rx) = watch::channel(Arc::new(L7Config::default()));
        let publisher = TablePublisher::start(channel);
        publisher.rebase(Arc::new(table(&["a", "b", "c"])));
        remove(&publisher, "a");
        remove(&publisher, "b");
        assert!(wait_for(&rx, &table(&["c"])), "{:?}", rx.borrow());

        publisher.pause();
        remove(&publisher, "c");
        std::thread::sleep(PUBLISH_INTERVAL * 2);
        assert_eq!(
            **rx.borrow(),
            table(&["c"]),
            "nothing published while paused"
        );

        publisher.rebase(Arc::new(table(&["d", "e"])));
        remove(&publisher, "d");
        assert!(wait_for(&rx, &table(&["e"])), "{:?}", rx.borrow());
    }
}
