//! The consistent-hash key of a request: header, cookie (issued when absent and a ttl is set,
//! as Envoy does), source IP or query parameter.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, COOKIE};

use super::hash::hash64;
use meshpath_model::l7::HashKey;

/// The hash of one request, and the cookie to issue when the key was a generated cookie.
pub(crate) struct RequestHash {
    pub hash: Option<u64>,
    pub set_cookie: Option<HeaderValue>,
}

/// Computes the request's hash key. No key (header absent, cookie absent without ttl, ...)
/// means no hash: the balancer then picks at random, as Envoy's does.
pub(crate) fn request_hash(
    key: &HashKey,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
) -> RequestHash {
    let none = RequestHash {
        hash: None,
        set_cookie: None,
    };
    match key {
        HashKey::Header(name) => match headers.get(name.as_str()) {
            Some(v) => RequestHash {
                hash: Some(hash64(v.as_bytes())),
                set_cookie: None,
            },
            None => none,
        },
        HashKey::SourceIp => {
            let hash = match peer.ip() {
                std::net::IpAddr::V4(ip) => hash64(&ip.octets()),
                std::net::IpAddr::V6(ip) => hash64(&ip.octets()),
            };
            RequestHash {
                hash: Some(hash),
                set_cookie: None,
            }
        }
        HashKey::QueryParameter(name) => match query.and_then(|q| query_value(q, name)) {
            Some(v) => RequestHash {
                hash: Some(hash64(v.as_bytes())),
                set_cookie: None,
            },
            None => none,
        },
        HashKey::Cookie { name, path, ttl } => {
            if let Some(v) = cookie_value(headers, name) {
                return RequestHash {
                    hash: Some(hash64(v.as_bytes())),
                    set_cookie: None,
                };
            }
            let Some(ttl) = ttl else { return none };
            // Like Envoy: the value derives from the client's address, and the request is
            // hashed on it so the first request lands where the following ones will.
            let mut addr = String::with_capacity(48);
            let _ = write!(addr, "{peer}");
            let value = format!("{:016x}", hash64(addr.as_bytes()));
            let set_cookie = set_cookie_value(name, &value, path.as_deref(), *ttl);
            RequestHash {
                hash: Some(hash64(value.as_bytes())),
                set_cookie,
            }
        }
    }
}

/// Envoy's `makeSetCookieValue`: `name="value"; Max-Age=N; Path=p; HttpOnly` (no Max-Age for a
/// zero ttl: a session cookie).
fn set_cookie_value(
    name: &str,
    value: &str,
    path: Option<&str>,
    ttl: Duration,
) -> Option<HeaderValue> {
    let mut s = format!("{name}=\"{value}\"");
    if !ttl.is_zero() {
        let _ = write!(s, "; Max-Age={}", ttl.as_secs());
    }
    if let Some(p) = path.filter(|p| !p.is_empty()) {
        let _ = write!(s, "; Path={p}");
    }
    s.push_str("; HttpOnly");
    HeaderValue::try_from(s).ok()
}

/// The value of cookie `name` in any `cookie` header, without surrounding quotes.
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    for h in headers.get_all(COOKIE) {
        let Ok(s) = std::str::from_utf8(h.as_bytes()) else {
            continue;
        };
        for pair in s.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k.trim() == name {
                    let v = v.trim();
                    return Some(
                        v.strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or(v),
                    );
                }
            }
        }
    }
    None
}

/// The raw (still percent-encoded) value of the first `name=` in a query string.
pub(crate) fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_extracted_like_envoy() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("a=1; user=\"bob\"; b=2"));
        assert_eq!(cookie_value(&h, "user"), Some("bob"));
        assert_eq!(cookie_value(&h, "nope"), None);
        assert_eq!(query_value("x=1&id=42&y", "id"), Some("42"));
        assert_eq!(query_value("x=1&y", "y"), Some(""));
        let peer: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let key = HashKey::Cookie {
            name: "sticky".into(),
            path: Some("/".into()),
            ttl: Some(Duration::from_secs(60)),
        };
        let r = request_hash(&key, &HeaderMap::new(), None, peer);
        let cookie = r.set_cookie.unwrap();
        let s = cookie.to_str().unwrap();
        assert!(
            s.starts_with("sticky=\"") && s.ends_with("\"; Max-Age=60; Path=/; HttpOnly"),
            "{s}"
        );
        let value = &s[8..24];
        assert_eq!(r.hash, Some(hash64(value.as_bytes())));
        let no_ttl = HashKey::Cookie {
            name: "sticky".into(),
            path: None,
            ttl: None,
        };
        assert!(request_hash(&no_ttl, &HeaderMap::new(), None, peer)
            .hash
            .is_none());
    }
}
