//! Istio's `ValidateVirtualService`: hosts, gateways, delegation, and each route.

use serde_json::Value;

use super::http::{destination, http_route};
use super::{entries, export_to, get, int, items, metadata, names, namespace, strings, Findings};

const MESH: &str = "mesh";

/// Every problem Istio finds in a VirtualService object.
pub fn virtual_service(object: &Value) -> Findings {
    let mut out = Findings::default();
    metadata(object, &mut out);
    let Some(spec) = get(object, "spec") else {
        out.err(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
        return out;
    };
    let hosts = strings(spec, "hosts");
    let gateways = strings(spec, "gateways");
    let (http, tcp, tls) = (items(spec, "http"), items(spec, "tcp"), items(spec, "tls"));
    // No hosts: a delegate, which only its root's HTTP routes can use.
    if hosts.is_empty() {
        if !gateways.is_empty() {
            out.err(
                "spec.gateways",
                "delegate virtual service must have no gateways specified",
            );
        }
        if !tls.is_empty() {
            out.err(
                "spec.tls",
                "delegate virtual service must have no tls route specified",
            );
        }
        if !tcp.is_empty() {
            out.err(
                "spec.tcp",
                "delegate virtual service must have no tcp route specified",
            );
        }
    }
    for (i, g) in gateways.iter().enumerate() {
        gateway_name(&format!("spec.gateways[{i}]"), g, &mut out);
    }
    let for_gateway = !gateways.is_empty() && !gateways.contains(&MESH);
    if !for_gateway {
        for (i, route) in http.iter().enumerate() {
            for (j, m) in items(route, "match").iter().enumerate() {
                for field in ["headers", "withoutHeaders"] {
                    for (key, _) in entries(m, field) {
                        if names::is_jwt_claim(key) {
                            out.err(
                                format!("spec.http[{i}].match[{j}].{field}.{key}"),
                                format!(
                                    "JWT claim based routing (key: {key}) is only supported for \
                                     gateway, found no gateways: [{}]",
                                    gateways.join(" ")
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
    let sni = tls.iter().any(|t| {
        items(t, "match")
            .iter()
            .any(|m| !items(m, "sniHosts").is_empty())
    });
    let mut all_valid = true;
    for (i, host) in hosts.iter().enumerate() {
        let f = format!("spec.hosts[{i}]");
        let checked = if for_gateway {
            names::gateway_domain(sni, host)
        } else {
            names::wildcard_domain(host)
        };
        match checked {
            Err(e) if !names::is_ip(host) => {
                out.err(f, e);
                all_valid = false;
            }
            Ok(()) if !for_gateway && *host == "*" => {
                out.err(
                    f,
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                );
                all_valid = false;
            }
            _ => {}
        }
    }
    if all_valid {
        for i in 0..hosts.len() {
            for j in i + 1..hosts.len() {
                if names::hosts_overlap(hosts[i], hosts[j]) {
                    out.err(
                        format!("spec.hosts[{j}]"),
                        format!(
                            "duplicate hosts in virtual service: {} & {}",
                            hosts[i], hosts[j]
                        ),
                    );
                }
            }
        }
    }
    if http.is_empty() && tcp.is_empty() && tls.is_empty() {
        out.err(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    for (i, route) in http.iter().enumerate() {
        http_route(
            &format!("spec.http[{i}]"),
            route,
            hosts.is_empty(),
            &mut out,
        );
    }
    for (i, route) in tls.iter().enumerate() {
        tls_route(
            &format!("spec.tls[{i}]"),
            route,
            &hosts,
            for_gateway,
            &mut out,
        );
    }
    for (i, route) in tcp.iter().enumerate() {
        tcp_route(&format!("spec.tcp[{i}]"), route, &mut out);
    }
    export_to(namespace(object), spec, false, &mut out);
    out
}

pub(super) fn gateway_name(f: &str, name: &str, out: &mut Findings) {
    let (errors, warning) = names::gateway_name(name);
    for e in errors {
        out.err(f, e);
    }
    if let Some(w) = warning {
        out.warn(f, w);
    }
}

/// What TCP and TLS matches share: subnets, port, source labels, gateways.
fn l4_match(f: &str, m: &Value, out: &mut Findings) {
    for (k, subnet) in strings(m, "destinationSubnets").iter().enumerate() {
        out.check(
            &format!("{f}.destinationSubnets[{k}]"),
            names::ip_subnet(subnet),
        );
    }
    if int(m, "port") != 0 {
        out.check(&format!("{f}.port"), names::port(int(m, "port")));
    }
    source_labels(&format!("{f}.sourceLabels"), m, out);
    for (k, g) in strings(m, "gateways").iter().enumerate() {
        gateway_name(&format!("{f}.gateways[{k}]"), g, out);
    }
}

pub(super) fn source_labels(f: &str, m: &Value, out: &mut Findings) {
    for (key, value) in entries(m, "sourceLabels") {
        for e in names::label(key, value.as_str().unwrap_or_default()) {
            out.err(format!("{f}.{key}"), e);
        }
    }
}

fn tcp_route(f: &str, route: &Value, out: &mut Findings) {
    for (j, m) in items(route, "match").iter().enumerate() {
        l4_match(&format!("{f}.match[{j}]"), m, out);
    }
    if items(route, "route").is_empty() {
        out.err(format!("{f}.route"), "TCP route is required");
    }
    route_destinations(&format!("{f}.route"), route, out);
}

fn tls_route(f: &str, route: &Value, hosts: &[&str], for_gateway: bool, out: &mut Findings) {
    let matches = items(route, "match");
    if matches.is_empty() {
        out.err(
            format!("{f}.match"),
            "TLS route must have at least one match condition",
        );
    }
    for (j, m) in matches.iter().enumerate() {
        let mf = format!("{f}.match[{j}]");
        let sni = strings(m, "sniHosts");
        if sni.is_empty() {
            out.err(
                format!("{mf}.sniHosts"),
                "TLS match must have at least one SNI host",
            );
        }
        for (k, host) in sni.iter().enumerate() {
            sni_host(
                &format!("{mf}.sniHosts[{k}]"),
                host,
                hosts,
                for_gateway,
                out,
            );
        }
        l4_match(&mf, m, out);
    }
    if items(route, "route").is_empty() {
        out.err(format!("{f}.route"), "TLS route is required");
    }
    route_destinations(&format!("{f}.route"), route, out);
}

fn sni_host(f: &str, sni: &str, hosts: &[&str], for_gateway: bool, out: &mut Findings) {
    let checked = if for_gateway {
        names::gateway_domain(true, sni)
    } else {
        names::wildcard_domain(sni)
    };
    if let Err(e) = checked {
        if names::is_ip(sni) {
            out.warn(
                f,
                format!(
                    "using an IP address ({sni:?}) goes against SNI spec and most clients do not support this"
                ),
            );
        } else {
            out.err(f, e);
        }
        return;
    }
    // Istio's `host.Name.SubsetOf`: the SNI host must be within one of the VirtualService's.
    let within = |h: &&str| match h.strip_prefix('*') {
        Some(suffix) => match sni.strip_prefix('*') {
            Some(s) => s.ends_with(suffix),
            None => sni.ends_with(suffix),
        },
        None => sni == *h,
    };
    if !hosts.iter().any(within) {
        out.err(
            f,
            format!(
                "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                hosts.join(", ")
            ),
        );
    }
}

/// TCP and TLS destinations (`validateRouteDestinations`).
fn route_destinations(f: &str, route: &Value, out: &mut Findings) {
    let list = items(route, "route");
    let mut total = 0;
    for (k, rd) in list.iter().enumerate() {
        let df = format!("{f}[{k}]");
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
