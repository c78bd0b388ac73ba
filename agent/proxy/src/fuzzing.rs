//! The request path's pure steps over one request head, for the fuzz targets in `fuzz/`: route
//! selection (every match kind), the route's rewrite and header operations, the shaping of the
//! head for HTTP/1.1 and HTTP/2, the consistent-hash key, redirects and direct responses, the
//! retry decisions and the span's operation name; and an upstream HTTP/1 response read by the
//! proxy's client ([`upstream_response`]). No socket is opened and no task spawned.
//! Built only with the `fuzzing` feature; not an API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::request::Parts;

use meshpath_model::l7::{L7Config, RouteAction};

use crate::breaker::StatsMap;
use crate::handler::{cluster_hash, direct_reply, prepare_head};
use crate::headers::{self, finalize_head};
use crate::layers::route::{self, Client, Selected};
use crate::outlier::Outliers;
use crate::snapshot::{self, Registry, Snapshot};
use crate::upstream::Proto;
use crate::{operation, redirect};

/// A config in the runtime form the proxy serves it in.
pub struct Routes(Snapshot);

impl Routes {
    pub fn new(config: L7Config) -> Routes {
        Routes(snapshot::build(
            Arc::new(config),
            None,
            &mut Registry::new(),
            &mut StatsMap::new(),
            &Outliers::new(),
        ))
    }

    /// The listeners' addresses (the original destinations the config has routes for).
    pub fn listeners(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.0.listeners.keys().copied().collect();
        v.sort();
        v
    }

    /// `head` sent to `original_dst` by `peer` (with `labels`, in `namespace`) through every step the proxy
    /// takes before it opens an upstream connection; `status` is an upstream answer to decide a
    /// retry on. Returns the status of the proxy's own reply, or of 0 when it goes upstream.
    pub fn request(
        &self,
        original_dst: SocketAddr,
        peer: SocketAddr,
        labels: &BTreeMap<String, String>,
        namespace: Option<&str>,
        mut head: Parts,
        status: u16,
    ) -> u16 {
        let local: SocketAddr = ([127, 0, 0, 1], 15001).into();
        let mut authority = headers::authority(&head);
        let selected = route::select(
            &self.0,
            None,
            Some(original_dst),
            local,
            &Client { labels, namespace },
            &head,
            &authority,
        );
        let (route, matcher) = match selected {
            Ok(Selected::Route { route, matcher, .. }) => (route, matcher),
            Ok(Selected::Passthrough(_)) => return 0,
            Err(reply) => return reply.response().status().as_u16(),
        };
        let _ = operation::of(route, matcher, original_dst.port());
        let mut resp = match &route.route.action {
            RouteAction::Redirect(r) => redirect::redirect(r, &head, &authority),
            RouteAction::DirectResponse { .. } => direct_reply(route),
            RouteAction::Route(_) => {
                let Ok(dest) = route::destination(route) else {
                    return 503;
                };
                prepare_head(
                    route,
                    matcher,
                    dest.ops.as_deref(),
                    &mut head,
                    &mut authority,
                );
                if let Some(cluster) = &dest.cluster {
                    let _ = cluster_hash(cluster, &head, peer);
                }
                let proto = if head.version == http::Version::HTTP_2 {
                    Proto::Http2
                } else {
                    Proto::Http1
                };
                finalize_head(&mut head, &authority, proto);
                let retry = &route.retry;
                let _ = (retry.on_status(status), retry.on_timeout());
                let _ = retry.backoff(u32::from(status % 8));
                return 0;
            }
        };
        route.resp_ops.apply(resp.headers_mut());
        resp.status().as_u16()
    }
}

/// An upstream HTTP/1 response read from `wire` delivered in pieces ending at `cuts`, as the
/// proxy's client reads it; `Ok(None)` when the bytes end before the response, `Err` with the
/// protocol error the client would report.
pub fn upstream_response(
    wire: &[u8],
    head_request: bool,
    cuts: &[usize],
) -> Result<Option<crate::h1::replay::Decoded>, String> {
    let method = if head_request {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    crate::h1::replay::read(wire, &method, cuts).map_err(|e| e.to_string())
}

/// What the proxy's own HTTP/1.1 server makes of `bytes` at the front of a client connection:
/// the head of a request it serves itself, or `None` when it needs more bytes or leaves them to
/// hyper's server (then checked to be untouched).
pub fn own_server_head(bytes: &[u8]) -> Option<Parts> {
    let mut buf = bytes::BytesMut::from(bytes);
    match crate::h1::parse_request(&mut buf, crate::h1::MAX_WHOLE_BODY) {
        crate::h1::Parsed::Request { parts, .. } => Some(parts),
        crate::h1::Parsed::Partial | crate::h1::Parsed::HandOver => {
            assert_eq!(&buf[..], bytes, "bytes left to hyper must be untouched");
            None
        }
    }
}
