//! Route matching: an `HttpMatch` compiled once per config snapshot into a [`Matcher`] that
//! evaluates without allocating in the common case.
//!
//! Semantics are Envoy's as Istio configures it:
//! - the uri is matched against the path without its query string; `ignore_uri_case` makes
//!   exact and prefix matches ASCII-case-insensitive (never regexes);
//! - every regex is a full match (RE2 semantics), whatever anchors the pattern has;
//! - a header with several values is matched against the values joined with `,`;
//! - `without_headers` inverts the condition, and a missing header counts as the empty string
//!   (Istio sets `treat_missing_header_as_empty`), except for a presence condition, which holds
//!   exactly when the header is absent;
//! - query parameter values are percent-decoded before matching.

use std::borrow::Cow;
use std::collections::BTreeMap;

use http::header::{HeaderMap, HeaderName};
use regex::Regex;

use meshpath_model::l7::{HttpMatch, StringMatch};

#[derive(Debug)]
pub(crate) enum Str {
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(Regex),
}

impl Str {
    pub(crate) fn compile(m: &StringMatch) -> Str {
        match m {
            StringMatch::Exact(s) => Str::Exact(s.as_str().into()),
            StringMatch::Prefix(s) => Str::Prefix(s.as_str().into()),
            // Envoy regexes are full matches. `istio::convert` already anchors its patterns,
            // but re-wrapping is always correct (a pattern like `^a|b$` only looks anchored) and
            // costs one compile per config change.
            StringMatch::Regex(re) => Str::Regex(
                Regex::new(&format!("^(?:{})$", re.as_str()))
                    .unwrap_or_else(|_| re.as_ref().clone()),
            ),
        }
    }

    pub(crate) fn matches(&self, v: &str) -> bool {
        match self {
            Str::Exact(s) => v == &**s,
            Str::Prefix(s) => v.starts_with(&**s),
            Str::Regex(re) => re.is_match(v),
        }
    }

    fn matches_ignore_case(&self, v: &str) -> bool {
        match self {
            Str::Exact(s) => v.eq_ignore_ascii_case(s),
            Str::Prefix(s) => {
                v.len() >= s.len() && v.as_bytes()[..s.len()].eq_ignore_ascii_case(s.as_bytes())
            }
            Str::Regex(re) => re.is_match(v),
        }
    }
}

/// What the matcher reads of a request.
pub(crate) struct RequestView<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
    pub source_labels: &'a BTreeMap<String, String>,
}

#[derive(Debug)]
pub(crate) struct Matcher {
    uri: Option<Str>,
    ignore_uri_case: bool,
    method: Option<Str>,
    authority: Option<Str>,
    scheme: Option<Str>,
    headers: Vec<(HeaderName, Option<Str>)>,
    without_headers: Vec<(HeaderName, Option<Str>)>,
    query: Vec<(Box<str>, Str)>,
    source_labels: Vec<(String, String)>,
    /// A required header whose name no request can carry: the match can never hold.
    never: bool,
}

impl Matcher {
    pub(crate) fn compile(m: &HttpMatch) -> Matcher {
        let mut never = false;
        let mut headers = Vec::with_capacity(m.headers.len());
        for (name, cond) in &m.headers {
            match HeaderName::try_from(name.as_str()) {
                Ok(h) => headers.push((h, cond.as_ref().map(Str::compile))),
                Err(_) => never = true,
            }
        }
        // An unrepresentable name is never present, so "without" it always holds: drop it.
        let without_headers = m
            .without_headers
            .iter()
            .filter_map(|(name, cond)| {
                Some((
                    HeaderName::try_from(name.as_str()).ok()?,
                    cond.as_ref().map(Str::compile),
                ))
            })
            .collect();
        Matcher {
            uri: m.uri.as_ref().map(Str::compile),
            ignore_uri_case: m.ignore_uri_case,
            method: m.method.as_ref().map(Str::compile),
            authority: m.authority.as_ref().map(Str::compile),
            scheme: m.scheme.as_ref().map(Str::compile),
            headers,
            without_headers,
            query: m
                .query_params
                .iter()
                .map(|(k, v)| (k.as_str().into(), Str::compile(v)))
                .collect(),
            source_labels: m
                .source_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            never,
        }
    }

    pub(crate) fn matches(&self, r: &RequestView<'_>) -> bool {
        if self.never {
            return false;
        }
        if let Some(uri) = &self.uri {
            let ok = if self.ignore_uri_case {
                uri.matches_ignore_case(r.path)
            } else {
                uri.matches(r.path)
            };
            if !ok {
                return false;
            }
        }
        if !opt_matches(&self.method, r.method)
            || !opt_matches(&self.authority, r.authority)
            || !opt_matches(&self.scheme, r.scheme)
        {
            return false;
        }
        for (name, cond) in &self.headers {
            let Some(v) = header_str(r.headers, name) else {
                return false;
            };
            if cond.as_ref().is_some_and(|c| !c.matches(&v)) {
                return false;
            }
        }
        for (name, cond) in &self.without_headers {
            let held = match (header_str(r.headers, name), cond) {
                (None, None) => false,
                (Some(_), None) => true,
                (None, Some(c)) => c.matches(""),
                (Some(v), Some(c)) => c.matches(&v),
            };
            if held {
                return false;
            }
        }
        for (name, cond) in &self.query {
            let Some(v) = r.query.and_then(|q| super::hashkey::query_value(q, name)) else {
                return false;
            };
            if !cond.matches(&percent_decode(v)) {
                return false;
            }
        }
        self.source_labels
            .iter()
            .all(|(k, v)| r.source_labels.get(k) == Some(v))
    }

    /// How much of `path` Envoy's `prefix_rewrite` replaces for a request this matcher
    /// accepted: the prefix for a prefix match, the whole path for exact and regex matches,
    /// and `/` when there is no uri condition (Istio then emits `prefix: "/"`).
    pub(crate) fn rewrite_len(&self, path: &str) -> usize {
        match &self.uri {
            Some(Str::Prefix(p)) => p.len().min(path.len()),
            Some(Str::Exact(_) | Str::Regex(_)) => path.len(),
            None => usize::from(path.starts_with('/')),
        }
    }
}

fn opt_matches(m: &Option<Str>, v: &str) -> bool {
    m.as_ref().is_none_or(|m| m.matches(v))
}

/// The header's value, or all its values joined with `,` (Envoy's `getAllOfHeaderAsString`).
fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Cow<'a, str>> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    let first = std::str::from_utf8(first.as_bytes()).unwrap_or("");
    let Some(second) = all.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut joined = String::with_capacity(first.len() * 3);
    joined.push_str(first);
    for v in std::iter::once(second).chain(all) {
        joined.push(',');
        joined.push_str(std::str::from_utf8(v.as_bytes()).unwrap_or(""));
    }
    Some(Cow::Owned(joined))
}

fn percent_decode(v: &str) -> Cow<'_, str> {
    if !v.contains('%') {
        return Cow::Borrowed(v);
    }
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}
