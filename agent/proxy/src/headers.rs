//! Header manipulation: route header operations (compiled once per snapshot), hop-by-hop
//! stripping, and the request head's authority and URI for each upstream protocol.

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, EXPECT, HOST, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::Version;
use tracing::warn;

use super::upstream::Proto;
use meshpath_model::l7::HeaderOps;

/// `HeaderOps` with names and values parsed. Envoy's order: remove, then set (overwrite),
/// then add (append). Istio turns a `host`/`:authority` set or add into an authority rewrite,
/// never into a header.
#[derive(Debug, Default)]
pub(crate) struct CompiledOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    pub authority: Option<HeaderValue>,
}

fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name == ":authority"
}

impl CompiledOps {
    pub(crate) fn compile(ops: &HeaderOps) -> CompiledOps {
        let pair = |(k, v): &(String, String)| -> Option<(HeaderName, HeaderValue)> {
            match (
                HeaderName::try_from(k.as_str()),
                HeaderValue::try_from(v.as_str()),
            ) {
                (Ok(k), Ok(v)) => Some((k, v)),
                _ => {
                    warn!(header = %k, "header operation skipped: invalid header name or value");
                    None
                }
            }
        };
        let mut authority = None;
        for (k, v) in ops.add.iter().chain(&ops.set) {
            // Later wins, and `set` comes after `add`: Istio prefers `set`.
            if is_authority(k) {
                authority = HeaderValue::try_from(v.as_str()).ok();
            }
        }
        CompiledOps {
            remove: ops
                .remove
                .iter()
                .filter(|k| !is_authority(k))
                .filter_map(|k| HeaderName::try_from(k.as_str()).ok())
                .collect(),
            set: ops
                .set
                .iter()
                .filter(|(k, _)| !is_authority(k))
                .filter_map(pair)
                .collect(),
            add: ops
                .add
                .iter()
                .filter(|(k, _)| !is_authority(k))
                .filter_map(pair)
                .collect(),
            authority,
        }
    }

    pub(crate) fn apply(&self, h: &mut HeaderMap) {
        for k in &self.remove {
            h.remove(k);
        }
        for (k, v) in &self.set {
            h.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.add {
            h.append(k.clone(), v.clone());
        }
    }
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes connection-specific headers (RFC 9110 §7.6.1) before a message crosses the proxy;
/// `upgrade` keeps `Connection: upgrade` and `Upgrade` for a WebSocket handshake. `te:
/// trailers` stays: gRPC needs it. Also `Expect: 100-continue`, as Envoy does by default:
/// hyper's HTTP/1 server answers an HTTP/1 client's `100` itself when the body is first read,
/// and an upstream's `1xx` is never relayed (the client skips it), so upstream the header
/// would only ask for an interim answer nobody reads.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of them: one pass over the names (a length switch and a short
    // compare each) instead of a hashed lookup per hop-by-hop name.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(conn) = h.get(CONNECTION).cloned() {
        if let Ok(list) = conn.to_str() {
            for token in list.split(',').map(str::trim) {
                if upgrade && token.eq_ignore_ascii_case("upgrade") {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    h.remove(name);
                }
            }
        }
        if !upgrade {
            h.remove(CONNECTION);
        } else {
            h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(TRANSFER_ENCODING);
    if !upgrade {
        h.remove(UPGRADE);
    }
    if h.get(TE).is_some_and(|v| v.as_bytes() != b"trailers") {
        h.remove(TE);
    }
    if h.get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        h.remove(EXPECT);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "expect"
    )
}

/// The request's authority: `:authority` (HTTP/2, absolute-form) or `Host`.
pub(crate) fn authority(head: &Parts) -> HeaderValue {
    if let Some(a) = head.uri.authority() {
        if let Ok(v) = HeaderValue::try_from(a.as_str()) {
            return v;
        }
    }
    head.headers
        .get(HOST)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""))
}

/// Envoy's shadow host: `-shadow` after the host name, before any port.
pub(crate) fn shadow_authority(a: &HeaderValue) -> HeaderValue {
    let s = std::str::from_utf8(a.as_bytes()).unwrap_or("");
    let (host, port) = split_port(s);
    let shadow = match port {
        Some(p) => format!("{host}-shadow:{p}"),
        None => format!("{host}-shadow"),
    };
    HeaderValue::try_from(shadow).unwrap_or_else(|_| a.clone())
}

/// `host[:port]` split at the port; an IPv6 literal keeps its brackets.
pub(crate) fn split_port(a: &str) -> (&str, Option<&str>) {
    match a.rfind(':') {
        Some(i)
            if !a[i..].contains(']')
                && a[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && i + 1 < a.len() =>
        {
            (&a[..i], Some(&a[i + 1..]))
        }
        _ => (a, None),
    }
}

/// Replaces the path and query, keeping scheme and authority if the URI has them.
pub(crate) fn set_path_and_query(uri: &mut Uri, pq: &str) {
    let Ok(pq) = PathAndQuery::try_from(pq) else {
        return;
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(u) = Uri::from_parts(parts) {
        *uri = u;
    }
}

/// Shapes the head for the upstream protocol: HTTP/1.1 wants origin-form and `Host`; HTTP/2
/// wants an absolute URI (its `:authority`) and no `Host`.
pub(crate) fn finalize_head(head: &mut Parts, authority: &HeaderValue, proto: Proto) {
    let pq = |uri: &Uri| {
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    };
    match proto {
        Proto::Http1 => {
            head.version = Version::HTTP_11;
            // Usually the client's own single `Host` already is the authority (no rewrite): a
            // lookup then costs less than replacing it with a copy of itself.
            let mut hosts = head.headers.get_all(HOST).iter();
            if hosts.next() != Some(authority) || hosts.next().is_some() {
                head.headers.insert(HOST, authority.clone());
            }
            if head.uri.scheme().is_some() || head.uri.authority().is_some() {
                head.uri = Uri::from(pq(&head.uri));
            }
        }
        Proto::Http2 => {
            head.version = Version::HTTP_2;
            head.headers.remove(HOST);
            let same = head
                .uri
                .authority()
                .is_some_and(|a| a.as_str().as_bytes() == authority.as_bytes());
            if !same || head.uri.scheme().is_none() {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(head.uri.scheme().cloned().unwrap_or(Scheme::HTTP));
                parts.authority =
                    Authority::from_maybe_shared(Bytes::copy_from_slice(authority.as_bytes())).ok();
                parts.path_and_query = Some(pq(&head.uri));
                if let Ok(u) = Uri::from_parts(parts) {
                    head.uri = u;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripped(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h, false);
        h
    }

    #[test]
    fn expect_100_continue_is_answered_here_and_not_sent_on() {
        let h = stripped(&[("expect", "100-Continue"), ("x-a", "1")]);
        assert_eq!(h.get(EXPECT), None);
        assert_eq!(h.get("x-a").unwrap(), "1");
        // An expectation the proxy did not meet travels on, for the upstream to refuse.
        let h = stripped(&[("expect", "something-else")]);
        assert_eq!(h.get(EXPECT).unwrap(), "something-else");
    }

    #[test]
    fn connection_named_headers_go_and_te_trailers_stays() {
        let h = stripped(&[
            ("connection", "close, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["te", "x-kept"]);
    }
}
