//! Request mirroring (Istio `mirror`, Envoy `request_mirror_policies`): a copy goes to another
//! cluster with `-shadow` appended to its host, fire and forget.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::request::Parts;
use http_body_util::BodyExt;
use tracing::debug;

use super::body::{ActiveGuard, ProxyBody, UpBody};
use super::headers::{finalize_head, shadow_authority};
use super::snapshot::ClusterRt;
use super::upstream::{self, Proto};
use super::{lb, Proxy};

/// Sends a copy to the mirror cluster and forgets it: the copy's answer and failures never
/// reach the client, and the client never waits for it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_shadow(
    proxy: &Proxy,
    cluster: Arc<ClusterRt>,
    head: &Parts,
    authority: &HeaderValue,
    body: Option<Bytes>,
    hash: Option<u64>,
    proto: Proto,
    timeout: Option<Duration>,
) {
    let mut head = head.clone();
    finalize_head(&mut head, &shadow_authority(authority), proto);
    let max_idle = proxy.opts.max_idle_per_endpoint;
    tokio::spawn(async move {
        let Some(i) = lb::pick(&cluster, hash, &[]) else {
            return;
        };
        let ep = cluster.endpoints[i].clone();
        let opts = cluster.send_opts(proto, max_idle);
        let shadow = async {
            let _active = ActiveGuard::new(ep.clone());
            // No breaker slot: Envoy's shadows bypass the mirror cluster's pending queue.
            match upstream::send(&ep, &head, UpBody::Full(body), opts, None, &[]).await {
                Ok(sent) => {
                    // Read the answer through so the connection goes back to the pool.
                    let (_, inc) = sent.resp.into_parts();
                    let _ = ProxyBody::upstream(inc, None, None).collect().await;
                }
                Err((error, _)) => debug!(endpoint = %ep.addr, %error, "mirrored request failed"),
            }
        };
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, shadow).await;
            }
            None => shadow.await,
        }
    });
}
