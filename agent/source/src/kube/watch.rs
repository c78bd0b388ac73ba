//! One task per watched kind: kube-rs's watcher (list, then watch; relist after 410 Gone and
//! disconnects, with backoff) → converted [`Change`]s on a channel to the publisher.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, Resource};
use kube::error::DiscoveryError;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::aggregate::{Change, Item};
use super::objects::object_ref;
use crate::error::ObjectKind;
use crate::istio;

/// How often a missing Istio API group is looked for again (the CRDs may be installed later).
pub const ISTIO_DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);

/// A change of one kind, and when its event arrived.
#[derive(Debug)]
pub struct Msg {
    pub kind: ObjectKind,
    pub change: Change,
    pub at: Instant,
}

/// Watches every object of `api` (typed, or dynamic for the Istio CRDs) until the receiver is
/// gone. Errors are logged and retried with kube's default backoff; what was received before
/// stays (the publisher keeps it).
pub async fn run<K>(
    api: Api<K>,
    kind: ObjectKind,
    tx: mpsc::UnboundedSender<Msg>,
    errors: Counter,
    convert: impl Fn(&K) -> Item,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    // `any_semantic`: the first list may come from the API server's watch cache instead of a
    // quorum read of etcd; every node's agent lists at start, so this matters at scale.
    let config = watcher::Config::default().any_semantic();
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(Event::Apply(o)) => Change::Apply(convert(&o)),
            Ok(Event::Delete(o)) => Change::Delete(object_ref(o.meta())),
            Ok(Event::Init) => Change::Init,
            Ok(Event::InitApply(o)) => Change::InitApply(convert(&o)),
            Ok(Event::InitDone) => {
                if std::mem::take(&mut failing) {
                    info!(kind = kind.as_str(), "watch recovered: relisted");
                }
                Change::InitDone
            }
            Err(e) => {
                errors.inc();
                // Logged once per outage, then at debug: backoff retries can be many.
                if !std::mem::replace(&mut failing, true) {
                    warn!(kind = kind.as_str(), error = %e, "watch failed; retrying with backoff, programmed state kept");
                } else {
                    tracing::debug!(kind = kind.as_str(), error = %e, "watch still failing");
                }
                continue;
            }
        };
        let msg = Msg {
            kind,
            change,
            at: Instant::now(),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

/// Watches VirtualServices or DestinationRules in the newest version of `networking.istio.io`
/// the API server serves among v1, v1beta1 and v1alpha3 (every served version holds the same
/// objects). While the group is not served (no CRD installed), reports the kind as absent and
/// looks again every `rediscover`.
pub async fn run_istio(
    client: Client,
    kind: ObjectKind,
    tx: mpsc::UnboundedSender<Msg>,
    errors: Counter,
    rediscover: Duration,
) {
    let mut reported_absent = false;
    loop {
        match discover(&client, kind.as_str()).await {
            Ok(Some(resource)) => {
                info!(kind = kind.as_str(), api_version = %resource.api_version, "watching Istio objects");
                let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
                let convert = move |o: &DynamicObject| super::objects::istio_object(kind, o);
                run(api, kind, tx, errors, convert).await;
                return;
            }
            Ok(None) => {
                if !reported_absent {
                    info!(
                        kind = kind.as_str(),
                        group = istio::GROUP,
                        "not served by the API server (no CRD installed); treating as empty"
                    );
                    let msg = Msg {
                        kind,
                        change: Change::Absent,
                        at: Instant::now(),
                    };
                    if tx.send(msg).is_err() {
                        return;
                    }
                    reported_absent = true;
                }
            }
            Err(e) => {
                errors.inc();
                warn!(kind = kind.as_str(), error = %e, "API discovery failed; retrying");
            }
        }
        tokio::time::sleep(rediscover).await;
        if tx.is_closed() {
            return;
        }
    }
}

/// The resource of `kind` in the preferred supported Istio version, `None` if not served.
async fn discover(client: &Client, kind: &str) -> Result<Option<ApiResource>, kube::Error> {
    let group = match kube::discovery::group(client, istio::GROUP).await {
        Ok(g) => g,
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
        // A group that is not served at all is missing from discovery.
        Err(kube::Error::Discovery(
            DiscoveryError::MissingApiGroup(_) | DiscoveryError::EmptyApiGroup(_),
        )) => return Ok(None),
        Err(e) => return Err(e),
    };
    for version in ["v1", "v1beta1", "v1alpha3"] {
        if let Some((resource, _)) = group
            .versioned_resources(version)
            .into_iter()
            .find(|(r, _)| r.kind == kind)
        {
            return Ok(Some(resource));
        }
    }
    Ok(None)
}
