//! CORS, as Envoy's CORS filter applies a route's `corsPolicy` (Istio enables it on every
//! route that has one):
//! - a request without `Origin` (or with an empty one) is not a CORS request: untouched;
//! - a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
//!   origin is answered by the proxy, 200 with the grants, never reaching the service; from
//!   an origin not allowed it goes on to the service when unmatched preflights are forwarded
//!   (Envoy's default), else the proxy answers 200 without `Access-Control-Allow-Origin`;
//! - any other request from an allowed origin goes on, and its response (the service's, or
//!   the proxy's own answer after routing: no healthy upstream, overflow...)
//!   gets `Access-Control-Allow-Origin` (the origin itself), `-Allow-Credentials` and
//!   `-Expose-Headers`.
//!
//! An origin is allowed when one of `allowOrigins` matches it, or matches the literal `*`
//! (which is how `exact: "*"` or `regex: ".*"` allows every origin). Compiled once per
//! config snapshot; a request only compares strings.

use http::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::request::Parts;
use http::{Method, Response, StatusCode};

use super::super::body::{local_reply, ProxyBody};
use super::super::matching::Str;
use meshpath_model::l7::CorsPolicy;

/// What a grant says, `*` standing for "echo what the preflight asked for".
#[derive(Debug)]
enum Grant {
    Echo,
    Value(HeaderValue),
}

impl Grant {
    /// `None` for an empty list (the header is not sent) or a value no header can carry.
    fn of(joined: &str) -> Option<Grant> {
        match joined {
            "" => None,
            "*" => Some(Grant::Echo),
            v => HeaderValue::from_str(v).ok().map(Grant::Value),
        }
    }
}

#[derive(Debug)]
pub(crate) struct CorsRt {
    origins: Vec<Str>,
    allow_methods: Option<Grant>,
    allow_headers: Option<Grant>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
    forward_unmatched: bool,
}

impl CorsRt {
    pub(crate) fn compile(p: &CorsPolicy) -> CorsRt {
        CorsRt {
            origins: p.allow_origins.iter().map(Str::compile).collect(),
            allow_methods: Grant::of(&p.allow_methods),
            allow_headers: Grant::of(&p.allow_headers),
            expose_headers: Some(p.expose_headers.as_str())
                .filter(|v| !v.is_empty())
                .and_then(|v| HeaderValue::from_str(v).ok()),
            max_age: p.max_age.map(HeaderValue::from),
            credentials: p.allow_credentials,
            forward_unmatched: p.forward_unmatched_preflights,
        }
    }

    fn allowed(&self, origin: &[u8]) -> bool {
        let origin = std::str::from_utf8(origin).unwrap_or_default();
        self.origins
            .iter()
            .any(|m| m.matches("*") || m.matches(origin))
    }

    /// The request's fate: `Err` a preflight answered here (boxed: the common path carries
    /// only the origin); `Ok(Some(origin))` a CORS request
    /// from an allowed origin, whose response [`decorate`](Self::decorate) completes;
    /// `Ok(None)` nothing to do.
    pub(crate) fn check(
        &self,
        head: &Parts,
    ) -> Result<Option<HeaderValue>, Box<Response<ProxyBody>>> {
        let Some(origin) = head.headers.get(ORIGIN).filter(|o| !o.is_empty()) else {
            return Ok(None);
        };
        let allowed = self.allowed(origin.as_bytes());
        let latched = allowed.then(|| origin.clone());
        let requested = head
            .headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .filter(|m| !m.is_empty());
        let (true, Some(requested)) = (head.method == Method::OPTIONS, requested) else {
            return Ok(latched);
        };
        if !allowed && self.forward_unmatched {
            return Ok(None);
        }
        let mut resp = local_reply(StatusCode::OK, "");
        let h = resp.headers_mut();
        if let Some(origin) = latched {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        if self.credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        match &self.allow_methods {
            Some(Grant::Echo) => {
                h.insert(ACCESS_CONTROL_ALLOW_METHODS, requested.clone());
            }
            Some(Grant::Value(v)) => {
                h.insert(ACCESS_CONTROL_ALLOW_METHODS, v.clone());
            }
            None => {}
        }
        match &self.allow_headers {
            Some(Grant::Echo) => {
                if let Some(asked) = head.headers.get(ACCESS_CONTROL_REQUEST_HEADERS) {
                    h.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
                }
            }
            Some(Grant::Value(v)) => {
                h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            }
            None => {}
        }
        if let Some(age) = &self.max_age {
            h.insert(ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        Err(Box::new(resp))
    }

    /// The CORS headers of the response to an allowed origin's request.
    pub(crate) fn decorate(&self, origin: HeaderValue, h: &mut HeaderMap) {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose_headers {
            h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::Request;
    use meshpath_model::l7::StringMatch;

    use super::*;

    fn policy() -> CorsPolicy {
        CorsPolicy {
            allow_origins: vec![
                StringMatch::Exact("https://a.example".into()),
                StringMatch::Prefix("https://dev.".into()),
                StringMatch::Regex(Arc::new(regex::Regex::new(r"https://\w+\.corp").unwrap())),
            ],
            allow_methods: "GET,POST".into(),
            allow_headers: "x-a,x-b".into(),
            expose_headers: "x-exposed".into(),
            max_age: Some(86400),
            allow_credentials: true,
            forward_unmatched_preflights: true,
        }
    }

    fn head(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method(method).uri("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn preflight(origin: &str) -> Parts {
        head(
            Method::OPTIONS,
            &[
                ("origin", origin),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "x-asked"),
            ],
        )
    }

    /// The request goes on; with the origin its response must name, if any.
    fn passes(c: &CorsRt, head: &Parts) -> Option<HeaderValue> {
        match c.check(head) {
            Ok(origin) => origin,
            Err(resp) => panic!("answered by the proxy: {}", resp.status()),
        }
    }

    fn header<'r>(r: &'r Response<ProxyBody>, name: &str) -> Option<&'r str> {
        r.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn origins_match_exactly_by_prefix_or_by_full_regex() {
        let c = CorsRt::compile(&policy());
        assert!(c.allowed(b"https://a.example"));
        assert!(!c.allowed(b"https://a.example.evil"));
        assert!(!c.allowed(b"http://a.example"));
        assert!(c.allowed(b"https://dev.anything"));
        assert!(c.allowed(b"https://eng.corp"));
        assert!(
            !c.allowed(b"https://eng.corp.evil"),
            "regexes are full matches"
        );
        let any = CorsRt::compile(&CorsPolicy {
            allow_origins: vec![StringMatch::Exact("*".into())],
            ..CorsPolicy::default()
        });
        assert!(any.allowed(b"https://whoever"), "`*` allows every origin");
    }

    #[test]
    fn an_allowed_preflight_is_answered_with_the_grants() {
        let c = CorsRt::compile(&policy());
        let resp = c.check(&preflight("https://a.example")).unwrap_err();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "access-control-allow-origin"),
            Some("https://a.example")
        );
        assert_eq!(
            header(&resp, "access-control-allow-methods"),
            Some("GET,POST")
        );
        assert_eq!(
            header(&resp, "access-control-allow-headers"),
            Some("x-a,x-b")
        );
        assert_eq!(header(&resp, "access-control-max-age"), Some("86400"));
        assert_eq!(
            header(&resp, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(header(&resp, "access-control-expose-headers"), None);
    }

    #[test]
    fn a_star_grant_echoes_what_the_preflight_asked() {
        let c = CorsRt::compile(&CorsPolicy {
            allow_origins: vec![StringMatch::Prefix("https://".into())],
            allow_methods: "*".into(),
            allow_headers: "*".into(),
            ..CorsPolicy::default()
        });
        let resp = c.check(&preflight("https://b.example")).unwrap_err();
        assert_eq!(header(&resp, "access-control-allow-methods"), Some("PUT"));
        assert_eq!(
            header(&resp, "access-control-allow-headers"),
            Some("x-asked")
        );
        assert_eq!(header(&resp, "access-control-allow-credentials"), None);
        assert_eq!(header(&resp, "access-control-max-age"), None);
    }

    #[test]
    fn an_unmatched_preflight_is_forwarded_or_answered_without_grant() {
        let forwarding = CorsRt::compile(&policy());
        assert_eq!(passes(&forwarding, &preflight("https://evil")), None);
        let ignoring = CorsRt::compile(&CorsPolicy {
            forward_unmatched_preflights: false,
            ..policy()
        });
        let resp = ignoring.check(&preflight("https://evil")).unwrap_err();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "access-control-allow-origin"), None);
        assert_eq!(
            header(&resp, "access-control-allow-methods"),
            Some("GET,POST")
        );
    }

    #[test]
    fn actual_requests_go_on_and_only_allowed_origins_are_decorated() {
        let c = CorsRt::compile(&policy());
        let get = head(Method::GET, &[("origin", "https://a.example")]);
        let origin = passes(&c, &get).expect("allowed");
        let mut h = HeaderMap::new();
        c.decorate(origin, &mut h);
        assert_eq!(h["access-control-allow-origin"], "https://a.example");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-expose-headers"], "x-exposed");
        let evil = head(Method::GET, &[("origin", "https://evil")]);
        assert_eq!(passes(&c, &evil), None);
        assert_eq!(passes(&c, &head(Method::GET, &[])), None);
        assert_eq!(passes(&c, &head(Method::GET, &[("origin", "")])), None);
        // OPTIONS without Access-Control-Request-Method is not a preflight.
        let options = head(Method::OPTIONS, &[("origin", "https://a.example")]);
        assert!(passes(&c, &options).is_some());
    }
}
