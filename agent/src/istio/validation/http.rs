//! Istio's `validateHTTPRoute` and what it calls: matches, header operations, CORS, faults,
//! mirrors, redirects, direct responses, retries, rewrites, destinations.

use serde_json::Value;

use super::virtual_service::{gateway_name, source_labels};
use super::{entries, float, get, int, items, names, strings, text, Findings};

const KB: usize = 1024;
const MB: usize = 1024 * KB;

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

fn string_match_regex(f: &str, sm: &Value, place: &str, out: &mut Findings) {
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
                out.check(&hf, names::header_value(value.as_str().unwrap_or_default()));
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

fn cors_policy(f: &str, p: &Value, out: &mut Findings) {
    for (i, origin) in items(p, "allowOrigins").iter().enumerate() {
        let of = format!("{f}.allowOrigins[{i}]");
        let value = ["exact", "prefix", "regex"]
            .iter()
            .find_map(|k| origin.get(*k).and_then(Value::as_str))
            .unwrap_or_default();
        if value.is_empty() {
            out.err(&of, "'' is not a valid match type for CORS allow origins");
        } else {
            string_match_regex(&of, origin, "corsPolicy.allowOrigins", out);
        }
    }
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
    ];
    for (i, m) in strings(p, "allowMethods").iter().enumerate() {
        if !METHODS.contains(m) {
            out.err(
                format!("{f}.allowMethods[{i}]"),
                format!("{m:?} is not a supported HTTP method"),
            );
        }
    }
    for field in ["allowHeaders", "exposeHeaders"] {
        for (i, h) in strings(p, field).iter().enumerate() {
            if *h != "*" {
                out.check(&format!("{f}.{field}[{i}]"), names::header_name(h));
            }
        }
    }
    if let Some(age) = get(p, "maxAge").and_then(Value::as_str) {
        let af = format!("{f}.maxAge");
        out.check(&af, names::duration(age));
        if names::parse_duration(age).is_some_and(|d| d.subsec_nanos() > 0) {
            out.err(af, "max_age duration is accurate only to seconds precision");
        }
    }
}

fn fault_injection(f: &str, fault: &Value, out: &mut Findings) {
    let (abort, delay) = (get(fault, "abort"), get(fault, "delay"));
    if abort.is_none() && delay.is_none() {
        out.err(f, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(a) = abort {
        let af = format!("{f}.abort");
        fault_percentage(&af, a, out);
        if let Some(status) = get(a, "grpcStatus") {
            let status = status.as_str().unwrap_or_default();
            if !GRPC_STATUS.contains(&status) {
                out.err(
                    format!("{af}.grpcStatus"),
                    format!(
                        "gRPC status {status:?} is not supported. See \
                         https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of \
                         supported codes, for example 'NOT_FOUND'"
                    ),
                );
            }
        } else if get(a, "http2Error").is_some() {
            out.err(
                format!("{af}.http2Error"),
                "HTTP/2 abort fault injection not supported yet",
            );
        } else if get(a, "httpStatus").is_some() {
            out.check(
                &format!("{af}.httpStatus"),
                http_status(int(a, "httpStatus")),
            );
        } else {
            out.warn(&af, "abort configured, but error type not set");
        }
    }
    if let Some(d) = delay {
        let df = format!("{f}.delay");
        fault_percentage(&df, d, out);
        if let Some(t) = get(d, "fixedDelay").and_then(Value::as_str) {
            out.check(&format!("{df}.fixedDelay"), names::duration(t));
        } else if let Some(t) = get(d, "exponentialDelay").and_then(Value::as_str) {
            out.check(&format!("{df}.exponentialDelay"), names::duration(t));
            out.err(
                format!("{df}.exponentialDelay"),
                "exponentialDelay not supported yet",
            );
        }
    }
}

fn fault_percentage(f: &str, v: &Value, out: &mut Findings) {
    if let Some(p) = get(v, "percentage") {
        let value = float(p, "value").unwrap_or_default();
        out.check(&format!("{f}.percentage"), names::percentage(value));
    }
}

/// Istio's names of gRPC status codes.
const GRPC_STATUS: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn http_status(status: i64) -> Result<(), String> {
    // Istio's bound is 600 inclusive, whatever its message says.
    if !(200..=600).contains(&status) {
        return Err(format!("HTTP status {status} is not in range 200-599"));
    }
    Ok(())
}

fn mirror_percentage(f: &str, what: &str, p: &Value, out: &mut Findings) {
    let value = float(p, "value").unwrap_or_default();
    if value > 100.0 {
        out.err(
            f,
            format!("{what} must have a max value of 100 (it has {value:.6})"),
        );
    }
    if value < 0.0 {
        out.err(
            f,
            format!("{what} must have a min value of 0 (it has {value:.6})"),
        );
    }
}

fn http_redirect(f: &str, r: &Value, matches: &[Value], out: &mut Findings) {
    let (uri, prefix) = (text(r, "uri"), text(r, "prefixRewrite"));
    if !uri.is_empty() && !prefix.is_empty() {
        return out.err(f, "redirect may only specify one of uri or prefix_rewrite");
    }
    if !prefix.is_empty()
        && matches
            .iter()
            .filter_map(|m| get(m, "uri"))
            .any(|u| u.get("prefix").is_none())
    {
        return out.err(
            f,
            "redirect prefix_rewrite requires all URI matches to use prefix match type",
        );
    }
    let port = get(r, "port").is_some() || get(r, "derivePort").is_some();
    if uri.is_empty()
        && prefix.is_empty()
        && text(r, "authority").is_empty()
        && !port
        && text(r, "scheme").is_empty()
    {
        return out.err(f, "redirect must specify URI, authority, scheme, or port");
    }
    let code = int(r, "redirectCode");
    if code != 0 && !(300..=399).contains(&code) {
        return out.err(
            format!("{f}.redirectCode"),
            format!("{code} is not a valid redirect code, must be 3xx"),
        );
    }
    let scheme = text(r, "scheme");
    if !scheme.is_empty() && scheme != "http" && scheme != "https" {
        return out.err(
            format!("{f}.scheme"),
            "invalid redirect scheme, must be \"http\" or \"https\"",
        );
    }
    if int(r, "port") > 0 {
        out.check(&format!("{f}.port"), names::port(int(r, "port")));
    }
}

fn direct_response(f: &str, d: &Value, out: &mut Findings) {
    if let Some(body) = get(d, "body") {
        let size = match (get(body, "string"), get(body, "bytes")) {
            (Some(s), _) => s.as_str().map_or(0, str::len),
            // base64 in YAML: the decoded size.
            (None, Some(b)) => b
                .as_str()
                .map_or(0, |b| b.trim_end_matches('=').len() * 3 / 4),
            (None, None) => 0,
        };
        if size > MB {
            out.err(
                format!("{f}.body"),
                "large direct_responses may impact control plane performance, must be less than 1MB",
            );
        } else if size > 100 * KB {
            out.warn(
                format!("{f}.body"),
                "large direct_responses may impact control plane performance",
            );
        }
    }
    out.check(&format!("{f}.status"), http_status(int(d, "status")));
}

/// Envoy's retry conditions Istio accepts in `retryOn`, besides HTTP status codes.
const RETRY_ON: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Status codes Go's `net/http` names (Istio accepts those in `retryOn`).
fn is_known_status(code: &str) -> bool {
    code.parse::<u16>().is_ok_and(|c| {
        matches!(c, 100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418
            | 421..=426 | 428 | 429 | 431 | 451 | 500..=508 | 510 | 511)
    })
}

fn http_retry(f: &str, r: &Value, out: &mut Findings) {
    let attempts = int(r, "attempts");
    if attempts < 0 {
        out.err(format!("{f}.attempts"), "attempts cannot be negative");
    }
    let configured = get(r, "perTryTimeout").is_some()
        || !text(r, "retryOn").is_empty()
        || get(r, "retryRemoteLocalities").is_some();
    if attempts == 0 && configured {
        out.err(
            f,
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    if let Some(t) = get(r, "perTryTimeout").and_then(Value::as_str) {
        out.check(&format!("{f}.perTryTimeout"), names::duration(t));
    }
    let retry_on = text(r, "retryOn");
    if !retry_on.is_empty() {
        for policy in retry_on.split(',') {
            if !RETRY_ON.contains(&policy) && !is_known_status(policy) {
                out.err(
                    format!("{f}.retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
    if let Some(t) = get(r, "backoff").and_then(Value::as_str) {
        out.check(&format!("{f}.backoff"), names::duration(t));
    }
}

fn http_rewrite(f: &str, r: &Value, out: &mut Findings) {
    let uri = text(r, "uri");
    let regex = get(r, "uriRegexRewrite");
    if !uri.is_empty() && regex.is_some() {
        return out.err(f, "rewrite may only contain one of URI or UriRegexRewrite");
    }
    if uri.is_empty() && regex.is_none() && text(r, "authority").is_empty() {
        return out.err(
            f,
            "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified",
        );
    }
    if let Some(re) = regex {
        let rf = format!("{f}.uriRegexRewrite");
        let (m, rw) = (text(re, "match"), text(re, "rewrite"));
        if m.is_empty() || rw.is_empty() {
            out.err(
                rf,
                "UriRegexRewrite has errors\nUriRegexRewrite requires both Rewrite and Match fields to be specified",
            );
        } else if let Err(e) = names::regex(m, "HTTPRewrite.UriRegexRewrite.Match") {
            out.err(
                format!("{rf}.match"),
                format!("UriRegexRewrite has errors\n{e}"),
            );
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
