//! Redirect responses.

use http::header::{HeaderValue, LOCATION};
use http::request::Parts;
use http::{Response, StatusCode};

use super::body::{local_reply, ProxyBody};
use super::headers::split_port;
use meshpath_model::l7::Redirect;

/// Envoy's redirect (`newUri`): scheme, host, port and path each replaced when given. The
/// request's port goes when a new port is set, or when the scheme changes away from the one the
/// port was the default of; a port that is the new scheme's default is never written (Istio
/// zeroes it). `derivePort: FROM_PROTOCOL_DEFAULT` drops the request's port, so the scheme's
/// default applies. The request's query string survives a path redirect that has none.
pub(crate) fn redirect(r: &Redirect, head: &Parts, authority: &HeaderValue) -> Response<ProxyBody> {
    let req_scheme = head.uri.scheme_str().unwrap_or("http");
    let scheme = r.scheme.as_deref().unwrap_or(req_scheme);
    let port = r
        .port
        .filter(|&p| !((scheme == "http" && p == 80) || (scheme == "https" && p == 443)));
    let req_authority = std::str::from_utf8(authority.as_bytes()).unwrap_or("");
    let mut location = String::with_capacity(64);
    location.push_str(scheme);
    location.push_str("://");
    match &r.authority {
        Some(host) => location.push_str(host),
        None => {
            let (host, req_port) = split_port(req_authority);
            let scheme_default = (req_scheme == "http" && req_port == Some("80"))
                || (req_scheme == "https" && req_port == Some("443"));
            let drop_port = port.is_some()
                || r.protocol_default_port
                || (scheme != req_scheme && scheme_default);
            location.push_str(if drop_port { host } else { req_authority });
        }
    }
    if let Some(p) = port {
        location.push(':');
        location.push_str(&p.to_string());
    }
    match &r.uri {
        Some(path) => {
            location.push_str(path);
            if let (false, Some(q)) = (path.contains('?'), head.uri.query()) {
                location.push('?');
                location.push_str(q);
            }
        }
        None => location.push_str(head.uri.path_and_query().map_or("/", |pq| pq.as_str())),
    }
    let status = StatusCode::from_u16(if r.status == 0 { 301 } else { r.status })
        .unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let mut resp = local_reply(status, "");
    if let Ok(v) = HeaderValue::try_from(location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}
