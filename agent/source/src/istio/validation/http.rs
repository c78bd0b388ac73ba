//! Istio's `validateHTTPRoute`: which actions a route combines, its matches, header operations
//! and destinations (the actions themselves are checked in `http_actions`).

use serde_json::Value;

use super::http_actions::{
    cors_policy, direct_response, fault_injection, http_redirect, http_retry, http_rewrite,
    mirror_percentage,
};
use super::virtual_service::{gateway_name, source_labels};
use super::{entries, get, header_value, int, items, names, strings, text, Findings};

pub(super) fn http_route(f: &str, r: &Value, in_delegate: bool, out: &mut Findings) {
    conflicts(f, r, in_delegate, out);
    matches(f, r, out);
    headers(&format!("{f}.headers"), get(r, "headers"), out);
    if let Some(cors) = get(r, "corsPolicy") {
        cors_policy(&format!("{f}.corsPolicy"), cors, out);
    }
    if let Some(fault) = get(r, "fault") {
        fault_injection(&format!("{f}.fault"), fault, out);
    }
    if let Some(p) = get(r, "mirrorPercent") {
        let value = p.as_i64().unwrap_or_default();
        if value > 100 {
            out.err(
                format!("{f}.mirrorPercent"),
                format!("mirror_percent must have a max value of 100 (it has {value})"),
            );
        }
        out.warn(
            format!("{f}.mirrorPercent"),
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
        );
    }
    if let Some(p) = get(r, "mirrorPercentage") {
        mirror_percentage(
            &format!("{f}.mirrorPercentage"),
            "mirror_percentage",
            p,
            out,
        );
    }
    if let Some(m) = get(r, "mirror") {
        destination(&format!("{f}.mirror"), m, out);
    }
    for (i, m) in items(r, "mirrors").iter().enumerate() {
        let mf = format!("{f}.mirrors[{i}]");
        match get(m, "destination") {
            None => out.err(&mf, "destination is required for mirrors"),
            Some(d) => {
                destination(&format!("{mf}.destination"), d, out);
                if let Some(p) = get(m, "percentage") {
                    mirror_percentage(&format!("{mf}.percentage"), "mirror percentage", p, out);
                }
            }
        }
    }
    if let Some(redirect) = get(r, "redirect") {
        http_redirect(&format!("{f}.redirect"), redirect, items(r, "match"), out);
    }
    if let Some(d) = get(r, "directResponse") {
        direct_response(&format!("{f}.directResponse"), d, out);
    }
    if let Some(retries) = get(r, "retries") {
        http_retry(&format!("{f}.retries"), retries, out);
    }
    if let Some(rewrite) = get(r, "rewrite") {
        http_rewrite(&format!("{f}.rewrite"), rewrite, out);
    }
    authority_rewrite(f, r, out);
    http_destinations(&format!("{f}.route"), items(r, "route"), out);
    if let Some(t) = get(r, "timeout").and_then(Value::as_str) {
        out.check(&format!("{f}.timeout"), names::duration(t));
    }
}

/// Which actions a route may combine; a root route (with `delegate`) only delegates.
fn conflicts(f: &str, r: &Value, in_delegate: bool, out: &mut Findings) {
    let has = |k: &str| get(r, k).is_some();
    let routes = !items(r, "route").is_empty();
    let name = text(r, "name");
    if has("delegate") && !in_delegate {
        if has("redirect") {
            out.err(
                f,
                format!("root HTTP route {name} must not specify redirect"),
            );
        }
        if has("route") {
            out.err(f, format!("root HTTP route {name} must not specify route"));
        }
        return;
    }
    if in_delegate && has("delegate") {
        out.err(
            format!("{f}.delegate"),
            "delegate HTTP route cannot contain delegate",
        );
    }
    if has("redirect") {
        for (cond, msg) in [
            (routes, "HTTP route cannot contain both route and redirect"),
            (
                has("fault"),
                "HTTP route cannot contain both fault and redirect",
            ),
            (
                has("rewrite"),
                "HTTP route rule cannot contain both rewrite and redirect",
            ),
            (
                has("directResponse"),
                "HTTP route rule cannot contain both direct_response and redirect",
            ),
        ] {
            if cond {
                out.err(f, msg);
            }
        }
    } else if has("directResponse") {
        for (cond, msg) in [
            (
                routes,
                "HTTP route cannot contain both route and direct_response",
            ),
            (
                has("fault"),
                "HTTP route cannot contain both fault and direct_response",
            ),
            (
                has("rewrite"),
                "HTTP route rule cannot contain both rewrite and direct_response",
            ),
        ] {
            if cond {
                out.err(f, msg);
            }
        }
    } else if !routes {
        out.err(f, "HTTP route, redirect or direct_response is required");
    }
    if has("mirror") && !items(r, "mirrors").is_empty() {
        out.err(f, "HTTP route cannot contain both mirror and mirrors");
    }
}

fn matches(f: &str, r: &Value, out: &mut Findings) {
    for (j, m) in items(r, "match").iter().enumerate() {
        let mf = format!("{f}.match[{j}]");
        for (name, sm) in entries(m, "headers") {
            let hf = format!("{mf}.headers.{name}");
            if sm.is_null() {
                out.err(&hf, format!("header match {name} cannot be null"));
            }
            out.check(&hf, names::match_header_name(name));
            string_match(&hf, sm, "headers", out);
        }
        for (name, sm) in entries(m, "withoutHeaders") {
            let hf = format!("{mf}.withoutHeaders.{name}");
            out.check(&hf, names::match_header_name(name));
            // `*` is not RE2: Istio reads it as "present".
            if text(sm, "regex") != "*" {
                string_match(&hf, sm, "withoutHeaders", out);
            }
        }
        // An empty URI prefix is Envoy's match-all; the other fields need a value.
        if let Some(uri) = get(m, "uri") {
            string_match_regex(&format!("{mf}.uri"), uri, "uri", out);
        }
        for field in ["scheme", "method", "authority"] {
            if let Some(sm) = get(m, field) {
                string_match(&format!("{mf}.{field}"), sm, field, out);
            }
        }
        for (name, sm) in entries(m, "queryParams") {
            string_match(&format!("{mf}.queryParams.{name}"), sm, "queryParams", out);
        }
        if int(m, "port") != 0 {
            out.check(&format!("{mf}.port"), names::port(int(m, "port")));
        }
        source_labels(&format!("{mf}.sourceLabels"), m, out);
        for (k, g) in strings(m, "gateways").iter().enumerate() {
            gateway_name(&format!("{mf}.gateways[{k}]"), g, out);
        }
        let ns = text(m, "sourceNamespace");
        if !ns.is_empty() && !names::is_dns1123_label(ns) {
            out.err(
                format!("{mf}.sourceNamespace"),
                format!("sourceNamespace match {ns} is invalid"),
            );
        }
    }
}

fn string_match(f: &str, sm: &Value, place: &str, out: &mut Findings) {
    if sm.get("prefix").and_then(Value::as_str) == Some("") {
        out.err(
            f,
            format!("{place:?}: prefix string match should not be empty"),
        );
    }
    string_match_regex(f, sm, place, out);
}

pub(super) fn string_match_regex(f: &str, sm: &Value, place: &str, out: &mut Findings) {
    if let Some(re) = sm.get("regex").and_then(Value::as_str) {
        if re.is_empty() {
            out.err(
                format!("{f}.regex"),
                format!("{place:?}: regex string match should not be empty"),
            );
        } else {
            out.check(&format!("{f}.regex"), names::regex(re, place));
        }
    }
}

/// Header operations of a route or of one destination.
fn headers(f: &str, h: Option<&Value>, out: &mut Findings) {
    let Some(h) = h else { return };
    for (side, op_check) in [
        (
            "request",
            names::request_header_op as fn(&str) -> Result<(), String>,
        ),
        ("response", names::header_op),
    ] {
        let Some(ops) = get(h, side) else { continue };
        for op in ["add", "set"] {
            for (name, value) in entries(ops, op) {
                let hf = format!("{f}.{side}.{op}.{name}");
                out.check(&hf, op_check(name));
                out.check(&hf, header_value::check(value.as_str().unwrap_or_default()));
            }
        }
        for (i, name) in strings(ops, "remove").iter().enumerate() {
            out.check(&format!("{f}.{side}.remove[{i}]"), names::header_op(name));
        }
    }
}

/// The authority may be rewritten in one place only.
fn authority_rewrite(f: &str, r: &Value, out: &mut Findings) {
    let mut current = r
        .pointer("/rewrite/authority")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let request = r.pointer("/headers/request");
    for op in ["set", "add"] {
        for (name, value) in request.map(|q| entries(q, op)).unwrap_or_default() {
            if !names::is_authority(name) {
                continue;
            }
            let value = value.as_str().unwrap_or_default();
            if !current.is_empty() {
                out.err(
                    format!("{f}.headers.request.{op}.{name}"),
                    format!(
                        "authority header cannot be set multiple times: have {current:?}, attempting to set {value:?}"
                    ),
                );
                return;
            }
            current = value.to_owned();
        }
    }
}

fn http_destinations(f: &str, list: &[Value], out: &mut Findings) {
    let mut total = 0;
    for (k, rd) in list.iter().enumerate() {
        let df = format!("{f}[{k}]");
        headers(&format!("{df}.headers"), get(rd, "headers"), out);
        match get(rd, "destination") {
            None => out.err(format!("{df}.destination"), "destination is required"),
            Some(d) => destination(&format!("{df}.destination"), d, out),
        }
        let weight = int(rd, "weight");
        if weight < 0 {
            out.err(format!("{df}.weight"), format!("weight {weight} < 0"));
        }
        total += weight;
    }
    if list.len() > 1 && total == 0 {
        out.err(f, "total destination weight = 0");
    }
}

/// Istio's `validateDestination`: host (a wildcard host, but not `*`), subset, port.
pub(super) fn destination(f: &str, d: &Value, out: &mut Findings) {
    let host = text(d, "host");
    if host == "*" {
        out.err(
            format!("{f}.host"),
            format!("invalid destination host {host}"),
        );
    } else {
        out.check(&format!("{f}.host"), names::wildcard_domain(host));
    }
    if let Some(subset) = get(d, "subset").and_then(Value::as_str) {
        if !subset.is_empty() {
            out.check(&format!("{f}.subset"), subset_name(subset));
        }
    }
    if let Some(port) = get(d, "port") {
        out.check(
            &format!("{f}.port.number"),
            names::port(int(port, "number")),
        );
    }
}

pub(super) fn subset_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("subset name cannot be empty".into());
    }
    if !names::is_dns1123_label(name) {
        return Err(format!("subset name is invalid: {name}"));
    }
    Ok(())
}
