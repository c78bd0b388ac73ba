//! The parts of an `http:` route besides its destinations: matches, fault injection, retries,
//! header operations.

use std::collections::BTreeMap;

use meshpath_model::istio::model::{Fault, HeaderOps, HttpMatch, Percent, Retries, StringMatch};
use meshpath_model::istio::{IstioInvalid, Warning};
use meshpath_model::l7::RetryOn;

use super::super::Ctx;
use super::MESH;
use crate::error::{ConvertError, Invalid};
use crate::istio::schema;

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
    // gRPC and HTTP/2 aborts are valid Istio the meshpath proxy does not inject.
    let other_abort = fault
        .abort
        .as_ref()
        .and_then(|a| match (&a.grpc_status, &a.http2_error) {
            (Some(_), _) => Some("grpcStatus"),
            (None, Some(_)) => Some("http2Error"),
            _ => None,
        });
    if let Some(kind) = other_abort {
        ctx.warn(Warning::Ignored {
            field: format!("{f}.abort.{kind}"),
        });
    }
    if let Some(a) = fault.abort.as_ref().filter(|_| other_abort.is_none()) {
        let field = format!("{f}.abort.httpStatus");
        let status = a
            .http_status
            .ok_or_else(|| ctx.err(&field, Invalid::Required))?;
        // Istio's bound is 600 inclusive.
        let status = ctx.int(&field, status, 200, 600)?;
        let pct = fault_percent(ctx, &format!("{f}.abort"), &a.percentage, a.percent)?;
        out.abort = Some((status, pct));
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
