//! Istio's checks of a DestinationRule's traffic policy: connection pool, outlier detection,
//! load balancer (with locality settings), client TLS, port-level settings, tunnel.

use serde_json::Value;

use super::{boolean, entries, float, get, int, items, names, strings, text, Findings};

pub(super) fn traffic_policy(f: &str, p: &Value, out: &mut Findings) {
    let fields = [
        "outlierDetection",
        "connectionPool",
        "loadBalancer",
        "tls",
        "portLevelSettings",
        "tunnel",
        "proxyProtocol",
        "retryBudget",
    ];
    if !fields.iter().any(|k| get(p, k).is_some()) {
        return out.err(f, "traffic policy must have at least one field");
    }
    if get(p, "tunnel").is_some() && get(p, "proxyProtocol").is_some() {
        return out.err(f, "tunnel and proxyProtocol must not be set together");
    }
    settings(f, p, out);
    for (i, pl) in items(p, "portLevelSettings").iter().enumerate() {
        let pf = format!("{f}.portLevelSettings[{i}]");
        if pl.is_null() {
            out.err(&pf, "traffic policy may not be null");
            continue;
        }
        if get(pl, "port").is_none() {
            out.err(&pf, "portTrafficPolicy must have valid port");
        }
        if ["outlierDetection", "connectionPool", "loadBalancer", "tls"]
            .iter()
            .all(|k| get(pl, k).is_none())
        {
            out.err(&pf, "port traffic policy must have at least one field");
        } else {
            settings(&pf, pl, out);
        }
    }
    if let Some(t) = get(p, "tunnel") {
        tunnel(&format!("{f}.tunnel"), t, out);
    }
}

/// What a policy and its port-level policies share.
fn settings(f: &str, p: &Value, out: &mut Findings) {
    let outlier = get(p, "outlierDetection");
    if let Some(o) = outlier {
        outlier_detection(&format!("{f}.outlierDetection"), o, out);
    }
    if let Some(c) = get(p, "connectionPool") {
        connection_pool(&format!("{f}.connectionPool"), c, out);
    }
    if let Some(lb) = get(p, "loadBalancer") {
        load_balancer(&format!("{f}.loadBalancer"), lb, outlier.is_some(), out);
    }
    if let Some(tls) = get(p, "tls") {
        client_tls(&format!("{f}.tls"), tls, out);
    }
}

fn tunnel(f: &str, t: &Value, out: &mut Findings) {
    let protocol = text(t, "protocol");
    if !protocol.is_empty() && protocol != "CONNECT" && protocol != "POST" {
        out.err(
            format!("{f}.protocol"),
            "tunnel protocol must be \"CONNECT\" or \"POST\"",
        );
    }
    let host = text(t, "targetHost");
    if let Err(e) = names::fqdn(host) {
        if !names::is_ip(host) {
            out.err(
                format!("{f}.targetHost"),
                format!("tunnel target host must be valid FQDN or IP address: {e}"),
            );
        }
    }
    if let Err(e) = names::port(int(t, "targetPort")) {
        out.err(
            format!("{f}.targetPort"),
            format!("tunnel target port is invalid: {e}"),
        );
    }
}

fn duration_field(f: &str, v: &Value, key: &str, out: &mut Findings) {
    if let Some(d) = get(v, key).and_then(Value::as_str) {
        out.check(&format!("{f}.{key}"), names::duration(d));
    }
}

fn outlier_detection(f: &str, o: &Value, out: &mut Findings) {
    duration_field(f, o, "baseEjectionTime", out);
    if int(o, "consecutiveErrors") != 0 {
        out.warn(
            format!("{f}.consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    if !boolean(o, "splitExternalLocalOriginErrors") && int(o, "consecutiveLocalOriginFailures") > 0
    {
        out.err(
            format!("{f}.consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    duration_field(f, o, "interval", out);
    for key in ["maxEjectionPercent", "minHealthPercent"] {
        out.check(&format!("{f}.{key}"), names::percent(int(o, key)));
    }
}

fn connection_pool(f: &str, c: &Value, out: &mut Findings) {
    let (http, tcp) = (get(c, "http"), get(c, "tcp"));
    if http.is_none() && tcp.is_none() {
        return out.err(f, "connection pool must have at least one field");
    }
    if let Some(h) = http {
        let hf = format!("{f}.http");
        for (key, what) in [
            ("http1MaxPendingRequests", "http1 max pending requests"),
            ("http2MaxRequests", "http2 max requests"),
            ("maxRequestsPerConnection", "max requests per connection"),
            ("maxRetries", "max retries"),
            ("maxConcurrentStreams", "max concurrent streams"),
        ] {
            if int(h, key) < 0 {
                out.err(
                    format!("{hf}.{key}"),
                    format!("{what} must be non-negative"),
                );
            }
        }
        duration_field(&hf, h, "idleTimeout", out);
        if text(h, "h2UpgradePolicy") == "UPGRADE" && boolean(h, "useClientProtocol") {
            out.err(
                format!("{hf}.useClientProtocol"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(ka) = get(h, "http2KeepAlive") {
            let kf = format!("{hf}.http2KeepAlive");
            for key in ["interval", "timeout"] {
                if get(ka, key).is_none() {
                    out.err(&kf, format!("http2 keepalive {key} is required"));
                } else {
                    duration_field(&kf, ka, key, out);
                }
            }
        }
    }
    if let Some(t) = tcp {
        let tf = format!("{f}.tcp");
        if int(t, "maxConnections") < 0 {
            out.err(
                format!("{tf}.maxConnections"),
                "max connections must be non-negative",
            );
        }
        duration_field(&tf, t, "connectTimeout", out);
        duration_field(&tf, t, "maxConnectionDuration", out);
        // 0s turns the idle timeout off.
        if let Some(idle) = get(t, "idleTimeout").and_then(Value::as_str) {
            if names::parse_duration(idle).is_none_or(|d| d.as_millis() != 0) {
                out.check(&format!("{tf}.idleTimeout"), names::duration(idle));
            }
        }
        if let Some(ka) = get(t, "tcpKeepalive") {
            duration_field(&format!("{tf}.tcpKeepalive"), ka, "time", out);
            duration_field(&format!("{tf}.tcpKeepalive"), ka, "interval", out);
        }
    }
}

fn load_balancer(f: &str, lb: &Value, has_outlier: bool, out: &mut Findings) {
    if let Some(ch) = get(lb, "consistentHash") {
        let cf = format!("{f}.consistentHash");
        if let Some(cookie) = get(ch, "httpCookie") {
            let kf = format!("{cf}.httpCookie");
            if text(cookie, "name").is_empty() {
                out.err(&kf, "name required for HttpCookie");
            }
            let mut seen: Vec<&str> = Vec::new();
            for (i, attr) in items(cookie, "attributes").iter().enumerate() {
                let name = text(attr, "name");
                let af = format!("{kf}.attributes[{i}].name");
                if name.is_empty() {
                    out.err(af, "cookie attribute name cannot be empty");
                } else if seen.contains(&name) {
                    out.err(af, format!("duplicate cookie attribute name: {name}"));
                } else {
                    seen.push(name);
                }
            }
        }
        let ring = int(ch, "minimumRingSize");
        if ring != 0 {
            out.warn(
                format!("{cf}.minimumRingSize"),
                "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
            );
            if get(ch, "ringHash").is_some() || get(ch, "maglev").is_some() {
                out.err(
                    &cf,
                    "only one of MinimumRingSize or Maglev/Ringhash can be specified",
                );
            }
        }
        if let Some(m) = get(ch, "maglev") {
            let mf = format!("{cf}.maglev.tableSize");
            let size = get(m, "tableSize")
                .and_then(Value::as_u64)
                .unwrap_or_default();
            if size == 0 {
                out.err(&mf, "tableSize must be set for maglev");
            }
            if size >= 5_000_011 {
                out.err(&mf, "tableSize must be less than 5000011 for maglev");
            }
            if !is_prime(size) {
                out.err(&mf, "tableSize must be a prime number for maglev");
            }
        }
    }
    let (locality, zone_aware) = (get(lb, "localityLbSetting"), get(lb, "zoneAwareLbSetting"));
    if locality.is_some() && zone_aware.is_some() {
        out.err(
            f,
            "only one of localityLbSetting and zoneAwareLbSetting can be set",
        );
    }
    if let Some(l) = locality {
        locality_lb(&format!("{f}.localityLbSetting"), l, has_outlier, out);
    }
    if let Some(w) = get(lb, "warmup") {
        let wf = format!("{f}.warmup");
        match get(w, "duration").and_then(Value::as_str) {
            None => out.err(&wf, "duration is required"),
            Some(d) => out.check(&format!("{wf}.duration"), names::duration(d)),
        }
        if float(w, "minimumPercent").is_some_and(|p| p > 100.0) {
            out.err(
                format!("{wf}.minimumPercent"),
                "minimumPercent value should be less than or equal to 100",
            );
        }
        if float(w, "aggression").is_some_and(|a| a <= 0.0) {
            out.err(
                format!("{wf}.aggression"),
                "aggression should be greater than 0",
            );
        }
    }
}

/// Envoy's primality test for Maglev table sizes.
fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x.is_multiple_of(2) {
        return false;
    }
    let mut factor = 3;
    while factor * factor <= x {
        if x.is_multiple_of(factor) {
            return false;
        }
        factor += 2;
    }
    true
}

fn locality_lb(f: &str, l: &Value, has_outlier: bool, out: &mut Findings) {
    let (distribute, failover) = (items(l, "distribute"), items(l, "failover"));
    let priority = strings(l, "failoverPriority");
    if !distribute.is_empty() && !failover.is_empty() {
        return out.err(
            f,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
    }
    const TOPOLOGY: [&str; 3] = [
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "topology.istio.io/subzone",
    ];
    if !failover.is_empty() {
        if let Some(label) = priority.iter().find(|p| TOPOLOGY.contains(p)) {
            return out.err(
                f,
                format!("can not simultaneously set 'failover' and topology label '{label}' in 'failover_priority'"),
            );
        }
    }
    let mut sources = Vec::new();
    for (i, d) in distribute.iter().enumerate() {
        let df = format!("{f}.distribute[{i}]");
        sources.push(text(d, "from"));
        let to = entries(d, "to");
        let mut total = 0;
        for (_, weight) in &to {
            let w = weight.as_i64().unwrap_or_default();
            if w <= 0 || w > 100 {
                return out.err(
                    format!("{df}.to"),
                    "locality weight must be in range [1, 100]",
                );
            }
            total += w;
        }
        if total != 100 {
            return out.err(
                format!("{df}.to"),
                format!("total locality weight {total} != 100"),
            );
        }
        out.check(
            &format!("{df}.to"),
            localities(&to.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()),
        );
    }
    out.check(&format!("{f}.distribute"), localities(&sources));
    if (!failover.is_empty() || !priority.is_empty()) && !has_outlier {
        out.warn(f, "outlier detection policy must be provided for failover");
    }
    for (i, fo) in failover.iter().enumerate() {
        let ff = format!("{f}.failover[{i}]");
        let (from, to) = (text(fo, "from"), text(fo, "to"));
        if from == to {
            out.err(
                &ff,
                "locality lb failover settings must specify different regions",
            );
        }
        if from.contains('/') || to.contains('/') {
            out.err(&ff, "locality lb failover only specify region");
        }
        if from.contains('*') || to.contains('*') {
            out.err(
                &ff,
                "locality lb failover region should not contain '*' wildcard",
            );
        }
    }
}

/// Localities (`region[/zone[/subzone]]`, a trailing `*` allowed) that must not overlap.
fn localities(list: &[&str]) -> Result<(), String> {
    let mut seen: Vec<Vec<&str>> = Vec::new();
    for locality in list {
        let stars = locality.matches('*').count();
        if stars > 1 || (stars == 1 && !locality.ends_with('*')) {
            return Err(format!(
                "locality {locality} wildcard '*' number can not exceed 1 and must be in the end"
            ));
        }
        let parts: Vec<&str> = locality.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "locality {locality} must not contain empty region/zone/subzone info"
            ));
        }
        // Two localities overlap when one is a prefix of the other (or either is `*`).
        let covers = |a: &[&str], b: &[&str]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| x == y || *x == "*" || *y == "*")
        };
        if seen.iter().any(|s| covers(s, &parts)) {
            return Err(format!(
                "locality {locality} overlap with previous specified ones"
            ));
        }
        seen.push(parts);
    }
    Ok(())
}

/// Istio's `ValidateTLS` of a client TLS setting.
fn client_tls(f: &str, t: &Value, out: &mut Findings) {
    let mode = text(t, "mode");
    let credential = text(t, "credentialName");
    let ca = text(t, "caCertificates");
    let sans = get(t, "subjectAltNames").is_some();
    if boolean(t, "insecureSkipVerify") {
        if mode == "SIMPLE" && (!ca.is_empty() || !credential.is_empty() || sans) {
            out.err(
                f,
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
        if mode == "MUTUAL" && (!ca.is_empty() || sans) {
            out.err(
                f,
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
    }
    if (mode == "SIMPLE" || mode == "MUTUAL") && !credential.is_empty() {
        if ["clientCertificate", "caCertificates", "privateKey", "caCrl"]
            .iter()
            .any(|k| !text(t, k).is_empty())
        {
            out.err(
                f,
                "cannot specify client certificates or CA certificate or CA CRL If credentialName is set",
            );
        }
        return;
    }
    if mode == "MUTUAL" {
        if text(t, "clientCertificate").is_empty() {
            out.err(f, "client certificate required for mutual tls");
        }
        if text(t, "privateKey").is_empty() {
            out.err(f, "private key required for mutual tls");
        }
    }
}
