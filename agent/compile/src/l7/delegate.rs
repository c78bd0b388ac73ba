//! Delegation: a root VirtualService's `http[].delegate` names a VirtualService without hosts
//! whose `http` routes take that route's place, merged with it by Istio's rules (its
//! `mergeVirtualServicesIfNeeded`):
//! - a delegate route's matches must each fit inside one of the root route's matches (same or
//!   narrower URI, scheme, method, authority; headers, query parameters and source labels that
//!   do not contradict); each fitting pair becomes one match, the delegate's conditions over
//!   the root's. A delegate route with a match that fits nowhere is dropped; without matches it
//!   takes the root's;
//! - the route's other settings (rewrite, timeout, retries, fault, mirrors, headers) are the
//!   delegate's, or the root's where the delegate has none; the name is `root-delegate`;
//! - a delegate that does not exist drops the root route (Istio logs it); delegation is one
//!   level deep (a delegate's own `delegate` routes are dropped);
//! - short destination hosts of a delegate name Services of the delegate's namespace.
//!
//! Merged VirtualServices are what the rest of compiling sees; the merged routes carry the
//! root route's index, so errors point at the root's `delegate` route.

use std::borrow::Cow;
use std::collections::BTreeMap;

use meshpath_model::istio::hosts::CLUSTER_DOMAIN;
use meshpath_model::istio::model::{Action, Destination, HttpMatch, HttpRoute, StringMatch};
use meshpath_model::istio::VirtualService;
use meshpath_model::ObjectRef;

/// Every VirtualService with hosts, roots merged with their delegates.
pub fn merge(
    all: &BTreeMap<ObjectRef, VirtualService>,
) -> BTreeMap<&ObjectRef, Cow<'_, VirtualService>> {
    all.iter()
        .filter(|(_, vs)| !vs.hosts.is_empty())
        .map(|(id, vs)| {
            let is_root = vs
                .http
                .iter()
                .any(|r| matches!(r.action, Action::Delegate(_)));
            if !is_root {
                return (id, Cow::Borrowed(vs));
            }
            let mut merged = vs.clone();
            merged.http = vs
                .http
                .iter()
                .flat_map(|root| match &root.action {
                    Action::Delegate(name) => delegated(vs, root, name, all),
                    _ => vec![root.clone()],
                })
                .collect();
            (id, Cow::Owned(merged))
        })
        .collect()
}

/// The routes `root` (a route of `vs`) hands over to the delegate `name`.
fn delegated(
    vs: &VirtualService,
    root: &HttpRoute,
    name: &ObjectRef,
    all: &BTreeMap<ObjectRef, VirtualService>,
) -> Vec<HttpRoute> {
    // As Istio: a delegate the root's namespace cannot see (`exportTo`) is not found.
    let visible = |d: &&VirtualService| {
        d.export_to
            .as_ref()
            .is_none_or(|to| to.contains(&vs.id.namespace))
    };
    let Some(delegate) = all.get(name).filter(|d| d.hosts.is_empty()).filter(visible) else {
        tracing::warn!(virtual_service = %vs.id, delegate = %name, origin = vs.origin.as_deref(),
            "delegate VirtualService not found (or it has hosts, or is not exported to the root's namespace); its root route is skipped");
        return Vec::new();
    };
    delegate
        .http
        .iter()
        .filter(|r| !matches!(r.action, Action::Delegate(_)))
        .filter_map(|leaf| {
            let merged = merge_route(root, leaf, &name.namespace);
            if merged.is_none() {
                tracing::warn!(virtual_service = %vs.id, delegate = %name,
                    route = leaf.name.as_deref().unwrap_or(""),
                    "delegate route's matches conflict with its root route's; skipped");
            }
            merged
        })
        .collect()
}

/// `leaf` (a delegate's route) under `root`; `None` when their matches conflict.
fn merge_route(root: &HttpRoute, leaf: &HttpRoute, leaf_ns: &str) -> Option<HttpRoute> {
    let matches = merge_matches(&root.matches, &leaf.matches)?;
    let mut out = leaf.clone();
    out.index = root.index;
    out.matches = matches;
    out.name = match (&root.name, &leaf.name) {
        (Some(r), Some(l)) => Some(format!("{r}-{l}")),
        (r, l) => l.clone().or_else(|| r.clone()),
    };
    let rewrite_set = |r: &HttpRoute| {
        r.rewrite_uri.is_some() || r.rewrite_authority.is_some() || r.rewrite_uri_regex.is_some()
    };
    if !rewrite_set(leaf) {
        out.rewrite_uri = root.rewrite_uri.clone();
        out.rewrite_authority = root.rewrite_authority.clone();
        out.rewrite_uri_regex = root.rewrite_uri_regex.clone();
    }
    out.timeout = leaf.timeout.or(root.timeout);
    out.retries = leaf.retries.clone().or_else(|| root.retries.clone());
    out.fault = leaf.fault.clone().or_else(|| root.fault.clone());
    if leaf.mirrors.is_empty() {
        out.mirrors = root.mirrors.clone();
    }
    out.cors = leaf.cors.clone().or_else(|| root.cors.clone());
    // `headers` is one field in Istio: the root's apply only when the delegate sets none.
    let no_headers = |r: &HttpRoute| {
        r.request_headers == Default::default() && r.response_headers == Default::default()
    };
    if no_headers(leaf) {
        out.request_headers = root.request_headers.clone();
        out.response_headers = root.response_headers.clone();
    }
    // The delegate's destinations name Services of its own namespace.
    if let Action::Route(dests) = &mut out.action {
        for (d, _) in dests.iter_mut() {
            qualify(d, leaf_ns);
        }
    }
    if !leaf.mirrors.is_empty() {
        for m in &mut out.mirrors {
            qualify(&mut m.destination, leaf_ns);
        }
    }
    Some(out)
}

/// A short host (`reviews`) as the FQDN of the Service in `namespace`.
fn qualify(d: &mut Destination, namespace: &str) {
    if !d.host.contains('.') && !d.host.starts_with('*') {
        d.host = format!("{}.{namespace}.svc.{CLUSTER_DOMAIN}", d.host);
    }
}

/// Every delegate match paired with each root match it fits in; `None` when one fits nowhere.
fn merge_matches(root: &[HttpMatch], leaf: &[HttpMatch]) -> Option<Vec<HttpMatch>> {
    if root.is_empty() {
        return Some(leaf.to_vec());
    }
    if leaf.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for l in leaf {
        let before = out.len();
        for r in root.iter().filter(|r| !conflict(r, l)) {
            out.push(merge_match(r, l));
        }
        if out.len() == before {
            return None;
        }
    }
    Some(out)
}

fn merge_match(root: &HttpMatch, leaf: &HttpMatch) -> HttpMatch {
    let keyed = |r: &[(String, Option<StringMatch>)], l: &[(String, Option<StringMatch>)]| {
        let mut map: BTreeMap<String, Option<StringMatch>> = r.iter().cloned().collect();
        map.extend(l.iter().cloned());
        map.into_iter().collect()
    };
    let mut query: BTreeMap<String, StringMatch> = root.query_params.iter().cloned().collect();
    query.extend(leaf.query_params.iter().cloned());
    let mut labels = root.source_labels.clone();
    labels.extend(leaf.source_labels.clone());
    HttpMatch {
        uri: leaf.uri.clone().or_else(|| root.uri.clone()),
        method: leaf.method.clone().or_else(|| root.method.clone()),
        authority: leaf.authority.clone().or_else(|| root.authority.clone()),
        scheme: leaf.scheme.clone().or_else(|| root.scheme.clone()),
        headers: keyed(&root.headers, &leaf.headers),
        without_headers: keyed(&root.without_headers, &leaf.without_headers),
        query_params: query.into_iter().collect(),
        source_labels: labels,
        ignore_uri_case: leaf.ignore_uri_case,
        port: leaf.port.or(root.port),
    }
}

/// Whether `leaf` asks for something outside `root` (Istio's `hasConflict`).
fn conflict(root: &HttpMatch, leaf: &HttpMatch) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    let keyed_conflict = |r: &[(String, Option<StringMatch>)],
                          l: &[(String, Option<StringMatch>)]| {
        l.iter().any(|(k, lv)| {
            let rv = r
                .iter()
                .find(|(rk, _)| rk == k)
                .and_then(|(_, v)| v.as_ref());
            string_conflict(rv, lv.as_ref())
        })
    };
    if keyed_conflict(&root.headers, &leaf.headers)
        || keyed_conflict(&root.without_headers, &leaf.without_headers)
    {
        return true;
    }
    if leaf.query_params.iter().any(|(k, lv)| {
        let rv = root.query_params.iter().find(|(rk, _)| rk == k);
        string_conflict(rv.map(|(_, v)| v), Some(lv))
    }) {
        return true;
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if matches!((root.port, leaf.port), (Some(r), Some(l)) if r != l) {
        return true;
    }
    leaf.source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|rv| rv != v))
}

/// Whether `leaf` is not within `root`: no conflict when either is absent; a regex on either
/// side conflicts with any condition on the other; an exact root admits only the same exact;
/// a prefix root admits a prefix or exact that starts with it.
fn string_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    match (root, leaf) {
        (StringMatch::Regex(_), _) | (_, StringMatch::Regex(_)) => true,
        (StringMatch::Exact(r), StringMatch::Exact(l)) => r != l,
        (StringMatch::Exact(_), StringMatch::Prefix(_)) => true,
        (StringMatch::Prefix(r), StringMatch::Prefix(l) | StringMatch::Exact(l)) => {
            !l.starts_with(r.as_str())
        }
    }
}

#[cfg(test)]
#[path = "delegate_tests.rs"]
mod tests;
