//! The parts of an `http:` route besides its destinations: matches, fault injection, retries,
//! header operations.

use std::collections::BTreeMap;

use meshpath_model::istio::model::{
    Abort, Fault, HeaderOps, HttpMatch, Percent, RegexRewrite, Retries, StringMatch,
};
use meshpath_model::istio::{IstioInvalid, Warning};
use meshpath_model::l7::RetryOn;

use super::super::Ctx;
use super::MESH;
use crate::error::{ConvertError, Invalid};
use crate::istio::schema;
use crate::istio::validation::GRPC_STATUS;

/// Envoy retry conditions Istio accepts in `retryOn` but the meshpath proxy does not implement:
/// valid config, so a warning rather than an error.
const RETRY_ON_OTHERS: &[&str] = &[
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "reset-before-request",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];
const RETRY_ON_EXPECTED: &str = "5xx, gateway-error, connect-failure, reset, retriable-4xx, an \
     HTTP status code, or another Envoy retry condition (refused-stream, cancelled, ...)";

/// `None` for a match limited to gateways other than the mesh.
pub(super) fn http_match(
    ctx: &mut Ctx,
    f: &str,
    m: &schema::HttpMatch,
) -> Result<Option<HttpMatch>, ConvertError> {
    if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == MESH) {
        ctx.warn(Warning::NotForMesh {
            field: f.to_owned(),
        });
        return Ok(None);
    }
    let single = |name: &str, s: &Option<schema::StringMatch>| {
        s.as_ref()
            .map(|s| ctx.string_match(&format!("{f}.{name}"), s, false))
            .transpose()
            .map(Option::flatten)
    };
    let named = |name: &str, map: &BTreeMap<String, schema::StringMatch>| {
        map.iter()
            .map(|(k, s)| {
                Ok((
                    k.to_ascii_lowercase(),
                    ctx.string_match(&format!("{f}.{name}.{k}"), s, true)?,
                ))
            })
            .collect::<Result<Vec<_>, ConvertError>>()
    };
    let any_value = || ctx.regex("", ".*").map(StringMatch::Regex);
    Ok(Some(HttpMatch {
        uri: single("uri", &m.uri)?,
        method: single("method", &m.method)?,
        authority: single("authority", &m.authority)?,
        scheme: single("scheme", &m.scheme)?,
        headers: named("headers", &m.headers)?,
        without_headers: named("withoutHeaders", &m.without_headers)?,
        // `{}` means "present" for query parameters too; the table has no presence form for
        // them, and a full-match of `.*` is exactly that.
        query_params: named("queryParams", &m.query_params)?
            .into_iter()
            .map(|(k, s)| Ok((k, s.map_or_else(any_value, Ok)?)))
            .collect::<Result<_, ConvertError>>()?,
        source_labels: m.source_labels.clone(),
        ignore_uri_case: m.ignore_uri_case,
        port: m
            .port
            .map(|p| ctx.port(&format!("{f}.port"), p))
            .transpose()?,
    }))
}

pub(super) fn fault(ctx: &mut Ctx, f: &str, fault: &schema::Fault) -> Result<Fault, ConvertError> {
    if fault.delay.is_none() && fault.abort.is_none() {
        return Err(ctx.err(
            f,
            IstioInvalid::AtLeastOneOf {
                fields: "delay, abort",
            },
        ));
    }
    let mut out = Fault::default();
    if let Some(d) = &fault.delay {
        let field = format!("{f}.delay.fixedDelay");
        let fixed = d
            .fixed_delay
            .as_deref()
            .ok_or_else(|| ctx.err(&field, Invalid::Required))?;
        let delay = ctx.duration_min_1ms(&field, fixed)?;
        let pct = fault_percent(ctx, &format!("{f}.delay"), &d.percentage, d.percent)?;
        out.delay = Some((delay, pct));
    }
    // `http2Error` never gets here: validation rejects it, as Istio's does.
    if let Some(a) = &fault.abort {
        let abort = match &a.grpc_status {
            Some(name) => {
                let field = format!("{f}.abort.grpcStatus");
                let code = GRPC_STATUS
                    .iter()
                    .position(|n| n == name)
                    .and_then(|c| u8::try_from(c).ok())
                    .ok_or_else(|| {
                        ctx.err(
                            &field,
                            Invalid::NotOneOf {
                                value: name.clone(),
                                expected: "a gRPC status name (UNAVAILABLE, NOT_FOUND, ...)",
                            },
                        )
                    })?;
                Abort::Grpc(code)
            }
            None => {
                let field = format!("{f}.abort.httpStatus");
                let status = a
                    .http_status
                    .ok_or_else(|| ctx.err(&field, Invalid::Required))?;
                // Istio's bound is 600 inclusive.
                Abort::Http(ctx.int(&field, status, 200, 600)?)
            }
        };
        let pct = fault_percent(ctx, &format!("{f}.abort"), &a.percentage, a.percent)?;
        out.abort = Some((abort, pct));
    }
    Ok(out)
}

/// A fault's share of requests; Istio injects into none when no percentage is given, which is
/// rarely what the writer meant, hence the warning.
fn fault_percent(
    ctx: &mut Ctx,
    f: &str,
    percentage: &Option<schema::Percent>,
    percent: Option<i64>,
) -> Result<Percent, ConvertError> {
    if percentage.is_none() && percent.is_none() {
        ctx.warn(Warning::NoFaultPercentage {
            field: f.to_owned(),
        });
    }
    ctx.percent_or(
        &format!("{f}.percentage"),
        percentage,
        (&format!("{f}.percent"), percent),
        0.0,
    )
}

pub(super) fn retries(
    ctx: &mut Ctx,
    f: &str,
    r: &schema::Retries,
) -> Result<Retries, ConvertError> {
    let attempts = ctx.int(&format!("{f}.attempts"), r.attempts, 0, i64::from(i32::MAX))?;
    let per_try_timeout = r
        .per_try_timeout
        .as_deref()
        .map(|t| ctx.duration_min_1ms(&format!("{f}.perTryTimeout"), t))
        .transpose()?;
    let mut retry_on = Vec::new();
    let field = format!("{f}.retryOn");
    for value in r
        .retry_on
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        let known = match value {
            "5xx" => RetryOn::FiveXx,
            "gateway-error" => RetryOn::GatewayError,
            "connect-failure" => RetryOn::ConnectFailure,
            "reset" => RetryOn::Reset,
            "retriable-4xx" => RetryOn::RetriableStatus4xx,
            other
                if RETRY_ON_OTHERS.contains(&other)
                    || other.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c)) =>
            {
                ctx.warn(Warning::RetryOn {
                    field: field.clone(),
                    value: other.to_owned(),
                });
                continue;
            }
            other => {
                return Err(ctx.err(
                    &field,
                    Invalid::NotOneOf {
                        value: other.to_owned(),
                        expected: RETRY_ON_EXPECTED,
                    },
                ))
            }
        };
        if !retry_on.contains(&known) {
            retry_on.push(known);
        }
    }
    let backoff = r
        .backoff
        .as_deref()
        .map(|t| ctx.duration_min_1ms(&format!("{f}.backoff"), t))
        .transpose()?;
    Ok(Retries {
        attempts,
        per_try_timeout,
        retry_on,
        backoff,
    })
}

/// `uriRegexRewrite`: the pattern unanchored (Envoy replaces every match in the path), and the
/// substitution's RE2 group references (`\1`) in `regex`'s syntax (`${1}`), its `$` literal.
pub(super) fn regex_rewrite(
    ctx: &Ctx,
    f: &str,
    rr: &schema::RegexRewrite,
) -> Result<RegexRewrite, ConvertError> {
    let pattern = ctx.regex_as(&format!("{f}.match"), &rr.pattern, &rr.pattern)?;
    Ok(RegexRewrite {
        pattern,
        substitution: substitution(&rr.rewrite),
    })
}

/// An RE2 substitution (`\N` a group, `\\` a backslash) as `regex::Regex::replace_all` wants it.
fn substitution(re2: &str) -> String {
    let mut out = String::with_capacity(re2.len() + 8);
    let mut chars = re2.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str("${");
                    out.push(*d);
                    chars.next();
                    out.push('}');
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

pub(super) fn header_ops(ops: Option<&schema::HeaderOps>) -> HeaderOps {
    let Some(ops) = ops else {
        return HeaderOps::default();
    };
    let pairs =
        |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    HeaderOps {
        set: pairs(&ops.set),
        add: pairs(&ops.add),
        remove: ops.remove.clone(),
    }
}
