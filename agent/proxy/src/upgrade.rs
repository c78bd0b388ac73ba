//! HTTP/1.1 upgrades (WebSocket), which Istio enables on every route: the handshake is routed
//! like any request, and on `101 Switching Protocols` both sockets are spliced together.

use http::header::{CONNECTION, UPGRADE};
use http::request::Parts;
use http::{Response, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::body::ProxyBody;

pub(crate) fn is_upgrade(head: &Parts) -> bool {
    head.version == Version::HTTP_11
        && head.headers.contains_key(UPGRADE)
        && head.headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Splices the client's upgraded connection to the upstream one once both sides switched.
pub(crate) fn tunnel(downstream: OnUpgrade, resp: &mut Response<ProxyBody>) {
    let Some(upstream) = resp.extensions_mut().remove::<OnUpgrade>() else {
        return;
    };
    tokio::spawn(async move {
        match tokio::try_join!(downstream, upstream) {
            Ok((down, up)) => {
                let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    debug!(%error, "upgraded connection ended with an error");
                }
            }
            Err(error) => debug!(%error, "protocol upgrade failed"),
        }
    });
}
