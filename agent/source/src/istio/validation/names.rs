//! Istio's checks of names and scalar values: DNS names and wildcard hosts, label keys and
//! values, header names and values, ports, durations, percentages, regular expressions.
//! Each returns Istio's message as the error.

use std::time::Duration;

use crate::istio::duration;

type Check = Result<(), String>;

const DNS1123_LABEL_MAX: usize = 63;

/// `[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?`, at most 63 characters (Istio allows either case).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS1123_LABEL_MAX
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// A first label that may be a wildcard: `*`, `label`, `*label` or `*-label`.
fn is_wildcard_label(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    s.len() <= DNS1123_LABEL_MAX
        && (is_dns1123_label(s)
            || s.strip_prefix('*').is_some_and(is_dns1123_label)
            || s.strip_prefix("*-").is_some_and(is_dns1123_label))
}

fn dns1123_preconditions(name: &str) -> Check {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

fn dns1123_labels(domain: &str) -> Check {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts[parts.len() - 1];
    if tld.parse::<i64>().is_ok() {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        // A trailing dot (`istio.io.`) is an absolute name, not an empty label.
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

pub fn fqdn(name: &str) -> Check {
    dns1123_preconditions(name)?;
    dns1123_labels(name)
}

/// A host that may start with a wildcard label (`*.example.com`, `*-foo.baz`, `*`).
pub fn wildcard_domain(domain: &str) -> Check {
    dns1123_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (domain, None),
    };
    if !is_wildcard_label(first) {
        return Err(format!(
            "domain name {domain:?} invalid (label {first:?} invalid)"
        ));
    }
    rest.map_or(Ok(()), dns1123_labels)
}

/// A VirtualService host for gateways: also allows the SNI names Istio generates for
/// AUTO_PASSTHROUGH (`outbound_.PORT_._.HOST`).
pub fn gateway_domain(sni: bool, domain: &str) -> Check {
    dns1123_preconditions(domain)?;
    if sni && domain.starts_with("outbound_") {
        let parts: Vec<&str> = domain.split('_').collect();
        if parts.len() < 4 {
            return Err(format!(
                "domain name {domain} invalid, should follow 'outbound_.<PORT>_._.<HOSTNAME>' format"
            ));
        }
        let port = parts[1].trim_matches('.');
        let host = parts[3].trim_matches('.');
        if !port.bytes().any(|b| b.is_ascii_digit()) {
            return Err(format!(
                "domain name {domain:?} invalid (label {port:?} invalid)"
            ));
        }
        if !host.bytes().any(|b| b.is_ascii_alphabetic()) {
            return Err(format!(
                "domain name {domain:?} invalid (label {host:?} invalid)"
            ));
        }
        return Ok(());
    }
    wildcard_domain(domain)
}

pub fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

pub fn ip_subnet(s: &str) -> Check {
    if s.matches('/').count() == 1 {
        let (addr, bits) = s.split_once('/').unwrap_or_default();
        let max = match addr.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => 32,
            Ok(std::net::IpAddr::V6(_)) => 128,
            Err(_) => return Err(format!("{s} is not a valid CIDR block")),
        };
        return match bits.parse::<u8>() {
            Ok(b) if b <= max && !bits.starts_with('+') => Ok(()),
            _ => Err(format!("{s} is not a valid CIDR block")),
        };
    }
    if is_ip(s) {
        Ok(())
    } else {
        Err(format!("{s} is not a valid IP"))
    }
}

pub fn port(p: i64) -> Check {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(format!("port number {p} must be in the range 1..65535"))
    }
}

/// Istio's `ValidateDuration`: at least 1ms, whole milliseconds.
pub fn duration(value: &str) -> Check {
    let d = duration::parse(value).map_err(|reason| {
        format!("{value:?} is not a duration (write e.g. 7s, 0.5s, 100ms, 5m, 1h): {reason}")
    })?;
    if d < Duration::from_millis(1) {
        return Err("duration must be greater than 1ms".into());
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err("only durations to ms precision are supported".into());
    }
    Ok(())
}

/// The duration's value when it parses (for checks beyond `duration`).
pub fn parse_duration(value: &str) -> Option<Duration> {
    duration::parse(value).ok()
}

/// An integer percentage (`maxEjectionPercent`, `minHealthPercent`).
pub fn percent(v: i64) -> Check {
    if (0..=100).contains(&v) {
        Ok(())
    } else {
        Err(format!("percentage {v} is not in range 0..100"))
    }
}

/// A `Percent` message of a fault: 0, or between 0.0001 and 100.
pub fn percentage(v: f64) -> Check {
    if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        Err(format!(
            "percentage {v} is neither 0.0, nor in range [0.0001, 100.0]"
        ))
    } else {
        Ok(())
    }
}

/// RFC 7230 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub fn header_name(name: &str) -> Check {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if !name.bytes().all(is_tchar) {
        return Err(format!("header name {name} is not a valid header name"));
    }
    Ok(())
}

/// Istio's JWT claim routing form of a header name: `@request.auth.claims.NAME` or
/// `@request.auth.claims[NAME]...`.
pub fn is_jwt_claim(name: &str) -> bool {
    name.strip_prefix("@request.auth.claims")
        .is_some_and(|rest| rest.len() > 1 && (rest.starts_with('.') || rest.starts_with('[')))
}

/// A header name in a match: a token, a pseudo-header, or a JWT claim.
pub fn match_header_name(name: &str) -> Check {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if is_jwt_claim(name)
        || [":method", ":scheme", ":authority", ":path", ":status"].contains(&name)
    {
        return Ok(());
    }
    header_name(name)
}

pub fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// A request header added or set: anything but a pseudo-header other than `:authority`
/// (whose double setting is checked separately).
pub fn request_header_op(name: &str) -> Check {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name.starts_with(':') && !is_authority(name) {
        return Err(format!(
            "invalid header {name:?}: header cannot have \":\" prefix"
        ));
    }
    Ok(())
}

/// A request header removed, or a response header changed: no pseudo-header, no Host.
pub fn header_op(name: &str) -> Check {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(format!("invalid header {name:?}: cannot set Host header"));
    }
    if name.starts_with(':') {
        return Err(format!(
            "invalid header {name:?}: header cannot have \":\" prefix"
        ));
    }
    Ok(())
}

/// Istio's check of a regular expression in `where` (a match field, a rewrite).
pub fn regex(re: &str, place: &str) -> Check {
    // Envoy bounds RE2's program size; Istio approximates it by the length.
    if re.len() > 1024 {
        return Err(format!(
            "{place:?}: regex is too large, max length allowed is 1024"
        ));
    }
    regex::Regex::new(re).map(drop).map_err(|e| {
        let text = e.to_string();
        let reason = text.lines().last().unwrap_or_default().trim();
        let reason = reason.strip_prefix("error: ").unwrap_or(reason);
        format!(
            "{place:?}: error parsing regexp: {reason}; Istio uses RE2 style regex-based match \
             (https://github.com/google/re2/wiki/Syntax)"
        )
    })
}

/// Kubernetes label keys and values, as Istio checks them (`labels.Instance.Validate`).
pub fn label(key: &str, value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| p.split('.').all(is_dns1123_label));
    if !prefix_ok || !is_qualified_name(name) {
        out.push(format!("invalid tag key: {key:?}"));
    } else if prefix.is_some_and(|p| p.len() > 253) {
        out.push(format!("invalid tag key: {key:?} (DNS prefix is too long)"));
    } else if name.len() > DNS1123_LABEL_MAX {
        out.push(format!("invalid tag key: {key:?} (name is too long)"));
    }
    if !value.is_empty() && !is_qualified_name(value) {
        out.push(format!("invalid tag value: {value:?}"));
    }
    out
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Istio's `host.Name.Matches`: whether one host (possibly a wildcard) covers the other.
pub fn hosts_overlap(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Istio's gateway reference forms: `name`, `name.namespace` (legacy, warned) or `ns/name`.
pub fn gateway_name(name: &str) -> (Vec<String>, Option<String>) {
    let mut errors = Vec::new();
    let mut warning = None;
    match name.split_once('/') {
        None => {
            if let Some((n, ns)) = name.split_once('.') {
                let ns = ns.split('.').next().unwrap_or_default();
                warning = Some(format!(
                    "using legacy gatewayName format {name:?}; prefer the <namespace>/<name> format: \"{ns}/{n}\""
                ));
            }
            if let Err(e) = fqdn(name) {
                errors.push(e);
            }
        }
        Some((ns, gw)) => {
            if ns.is_empty() || gw.is_empty() {
                errors.push("config namespace and gateway name cannot be empty".into());
            }
            if !is_dns1123_label(ns) {
                errors.push(format!("invalid value for namespace: {ns:?}"));
            }
            if !is_dns1123_label(gw) {
                errors.push(format!("invalid value for gateway name: {gw:?}"));
            }
        }
    }
    (errors, warning)
}
