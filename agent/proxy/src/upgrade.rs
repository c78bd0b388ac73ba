//! HTTP/1.1 upgrades (WebSocket), which Istio enables on every route: the handshake is routed
//! like any request, and on `101 Switching Protocols` both sockets are spliced together.

use http::header::{CONNECTION, UPGRADE};
use http::request::Parts;
use http::{Response, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::body::ProxyBody;
use super::h1::Upgraded;

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
    let Some(mut up) = resp
        .extensions_mut()
        .remove::<Upgraded>()
        .and_then(|u| u.take())
    else {
        return;
    };
    tokio::spawn(async move {
        match downstream.await {
            Ok(down) => {
                let mut down = TokioIo::new(down);
                if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    debug!(%error, "upgraded connection ended with an error");
                }
            }
            Err(error) => debug!(%error, "protocol upgrade failed"),
        }
    });
}
