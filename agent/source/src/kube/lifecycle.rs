//! Why the agent's pod is stopping: replaced (a rolling update of its DaemonSet, a deleted pod the
//! DaemonSet recreates, a node drain) or uninstalled (its DaemonSet or its namespace deleted, as
//! `kubectl delete -f deploy/` does). A replaced agent must leave its pinned programs attached,
//! since they serve the pods until the next agent takes them over; an uninstalled one must remove
//! them, or the node keeps translating ClusterIPs with maps nobody updates.
//!
//! Neither a preStop hook nor SIGTERM says which: both come the same way in either case. The
//! answer is in the API server: the pod's controlling DaemonSet (from its ownerReferences) and
//! its namespace. Both are watched from the start, because an uninstall also deletes the
//! agent's RBAC and service account, so a question asked only at SIGTERM may be refused; at
//! SIGTERM a fresh read is tried first and the watched state is the fallback. Both events come
//! before the SIGTERM: the namespace controller and the garbage collector delete the pods only
//! after the namespace is marked terminating or the DaemonSet is deleted.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{client, KubeOptions, KubeSourceError};

/// The agent's own pod (the DaemonSet passes both through the downward API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// What is known of one object the agent's lifetime depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Presence {
    /// Not known yet (not listed, or the read failed).
    #[default]
    Unknown,
    Present,
    /// `deletionTimestamp` set: on its way out (finalizers, foreground deletion).
    Deleting,
    /// Not found, or replaced by another object of the same name (another uid).
    Gone,
}

impl Presence {
    fn of(meta: &ObjectMeta, uid: Option<&str>) -> Self {
        if uid.is_some() && meta.uid.as_deref() != uid {
            Self::Gone
        } else if meta.deletion_timestamp.is_some() {
            Self::Deleting
        } else {
            Self::Present
        }
    }

    fn leaving(self) -> bool {
        matches!(self, Self::Deleting | Self::Gone)
    }
}

/// The decision at SIGTERM, with what it rests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The DaemonSet and the namespace stay: another agent takes over the pins.
    Replaced,
    /// The DaemonSet or the namespace is deleted or being deleted.
    Uninstalled,
    /// Nothing known (no DaemonSet owns the pod, the API server unreachable since the start):
    /// the pins stay, the safe side for traffic; `meshpath cleanup` removes them.
    Unknown,
}

/// Decides from the DaemonSet's and the namespace's presence, each the fresh read when it
/// answered, else the watched state.
pub fn decide(daemonset: Presence, namespace: Presence) -> Fate {
    if daemonset.leaving() || namespace.leaving() {
        Fate::Uninstalled
    } else if daemonset == Presence::Present && namespace == Presence::Present {
        Fate::Replaced
    } else {
        Fate::Unknown
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Seen {
    /// The controlling DaemonSet's name and uid, once the pod was read.
    owner: Option<(String, String)>,
    daemonset: Presence,
    namespace: Presence,
}

/// Watches the agent's DaemonSet and namespace until dropped.
pub struct Lifecycle {
    client: Client,
    pod: PodRef,
    seen: watch::Receiver<Seen>,
    task: JoinHandle<()>,
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Lifecycle {
    pub async fn start(options: &KubeOptions, pod: PodRef) -> Result<Self, KubeSourceError> {
        let client = client(options).await?;
        let (tx, seen) = watch::channel(Seen::default());
        let task = tokio::spawn(watch_owner(client.clone(), pod.clone(), tx));
        Ok(Self {
            client,
            pod,
            seen,
            task,
        })
    }

    /// Reads the DaemonSet and the namespace again (each read given `timeout`), falling back to
    /// what the watches saw for a read that fails (an uninstall may have deleted the agent's
    /// RBAC already).
    pub async fn fate(&self, timeout: Duration) -> Fate {
        let seen = self.seen.borrow().clone();
        let ns_api = Api::<core::Namespace>::all(self.client.clone());
        let namespace = fresh(ns_api.get_opt(&self.pod.namespace), None, timeout)
            .await
            .unwrap_or(seen.namespace);
        let daemonset = match &seen.owner {
            Some((name, uid)) => {
                let api = Api::<DaemonSet>::namespaced(self.client.clone(), &self.pod.namespace);
                fresh(api.get_opt(name), Some(uid), timeout)
                    .await
                    .unwrap_or(seen.daemonset)
            }
            None => Presence::Unknown,
        };
        let fate = decide(daemonset, namespace);
        info!(?fate, ?daemonset, ?namespace, owner = ?seen.owner.as_ref().map(|o| &o.0), "why the agent stops");
        fate
    }
}

/// One read: `None` when it failed or timed out.
async fn fresh<K: kube::Resource>(
    get: impl std::future::Future<Output = kube::Result<Option<K>>>,
    uid: Option<&str>,
    timeout: Duration,
) -> Option<Presence> {
    match tokio::time::timeout(timeout, get).await {
        Ok(Ok(Some(o))) => Some(Presence::of(o.meta(), uid)),
        Ok(Ok(None)) => Some(Presence::Gone),
        Ok(Err(error)) => {
            warn!(%error, "reading the agent's owner at stop failed; using the watched state");
            None
        }
        Err(_) => {
            warn!(
                ?timeout,
                "reading the agent's owner at stop timed out; using the watched state"
            );
            None
        }
    }
}

/// Finds the pod's controlling DaemonSet (retrying until the API server answers), then follows
/// it and the namespace.
async fn watch_owner(client: Client, pod: PodRef, tx: watch::Sender<Seen>) {
    let pods = Api::<core::Pod>::namespaced(client.clone(), &pod.namespace);
    let mut delay = Duration::from_millis(200);
    let owner = loop {
        match pods.get(&pod.name).await {
            Ok(p) => {
                break p
                    .metadata
                    .owner_references
                    .unwrap_or_default()
                    .into_iter()
                    .find(|o| {
                        o.controller == Some(true)
                            && o.kind == "DaemonSet"
                            && o.api_version == "apps/v1"
                    });
            }
            Err(error) => {
                warn!(%error, pod = %pod.name, "reading the agent's own pod; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    };
    let ns_api = Api::<core::Namespace>::all(client.clone());
    let ns_watch = follow(ns_api, pod.namespace.clone(), None, tx.clone(), |s, p| {
        s.namespace = p
    });
    let Some(owner) = owner else {
        info!(pod = %pod.name, "no DaemonSet owns the agent's pod: its pins stay when it stops");
        ns_watch.await;
        return;
    };
    info!(daemonset = %owner.name, "the agent removes its programs when this DaemonSet or its namespace is deleted");
    tx.send_modify(|s| s.owner = Some((owner.name.clone(), owner.uid.clone())));
    let ds_api = Api::<DaemonSet>::namespaced(client, &pod.namespace);
    let ds_watch = follow(ds_api, owner.name, Some(owner.uid), tx, |s, p| {
        s.daemonset = p
    });
    futures::join!(ns_watch, ds_watch);
}

/// Watches the one object called `name` (a field selector, so only it is listed), recording its
/// presence with `set`.
async fn follow<K>(
    api: Api<K>,
    name: String,
    uid: Option<String>,
    tx: watch::Sender<Seen>,
    set: impl Fn(&mut Seen, Presence),
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    // Within a relist: what the list showed, `Gone` when the object is not in it.
    let mut listed = Presence::Gone;
    while let Some(event) = stream.next().await {
        let now = match event {
            Ok(Event::Init) => {
                listed = Presence::Gone;
                continue;
            }
            Ok(Event::InitApply(o)) => {
                listed = Presence::of(o.meta(), uid.as_deref());
                continue;
            }
            Ok(Event::InitDone) => listed,
            Ok(Event::Apply(o)) => Presence::of(o.meta(), uid.as_deref()),
            Ok(Event::Delete(_)) => Presence::Gone,
            Err(error) => {
                tracing::debug!(%error, %name, "lifecycle watch failed; retrying");
                continue;
            }
        };
        tx.send_modify(|s| set(s, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_keeps_pins_unless_something_is_leaving() {
        use Presence::*;
        assert_eq!(decide(Present, Present), Fate::Replaced);
        assert_eq!(decide(Gone, Present), Fate::Uninstalled);
        assert_eq!(decide(Deleting, Present), Fate::Uninstalled);
        assert_eq!(decide(Present, Deleting), Fate::Uninstalled);
        // The RBAC was deleted first and the namespace watch saw it terminating.
        assert_eq!(decide(Unknown, Deleting), Fate::Uninstalled);
        assert_eq!(decide(Unknown, Present), Fate::Unknown);
        assert_eq!(decide(Present, Unknown), Fate::Unknown);
    }

    #[test]
    fn another_uid_is_another_daemonset() {
        let meta = ObjectMeta {
            uid: Some("b".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(Presence::of(&meta, Some("a")), Presence::Gone);
        assert_eq!(Presence::of(&meta, Some("b")), Presence::Present);
        assert_eq!(Presence::of(&meta, None), Presence::Present);
    }
}
