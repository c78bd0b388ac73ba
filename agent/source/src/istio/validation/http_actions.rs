//! Istio's checks of what an HTTP route does besides routing: CORS, fault injection, mirror
//! percentages, redirects, direct responses, retries, rewrites.

use serde_json::Value;

use super::http::string_match_regex;
use super::{float, get, int, items, names, strings, text, Findings};

const KB: usize = 1024;
const MB: usize = 1024 * KB;

pub(super) fn cors_policy(f: &str, p: &Value, out: &mut Findings) {
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

pub(super) fn fault_injection(f: &str, fault: &Value, out: &mut Findings) {
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

/// Istio's names of gRPC status codes, in code order (index = code).
pub(crate) const GRPC_STATUS: [&str; 17] = [
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

pub(super) fn mirror_percentage(f: &str, what: &str, p: &Value, out: &mut Findings) {
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

pub(super) fn http_redirect(f: &str, r: &Value, matches: &[Value], out: &mut Findings) {
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

pub(super) fn direct_response(f: &str, d: &Value, out: &mut Findings) {
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

pub(super) fn http_retry(f: &str, r: &Value, out: &mut Findings) {
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

pub(super) fn http_rewrite(f: &str, r: &Value, out: &mut Findings) {
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
