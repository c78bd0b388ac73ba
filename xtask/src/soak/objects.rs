//! The soak's cluster as manifests: two Services and the changes made to them while it runs.
//! Every state keeps at least one ready endpoint per Service and no rule that fails requests
//! except the fault injection, so any other failed request is meshpath's.

use std::net::Ipv4Addr;

use meshpath_tests::fortio::PORT;
use meshpath_tests::manifests::{endpoint_slice, service, Ep};

/// The kernel-path Service (no L7 rule) and the L7 one (steered to the node proxy).
pub const PLAIN: &str = "10.96.0.120";
pub const WEB: &str = "10.96.0.121";
/// The status a fault-injection rule answers with: no backend ever sends it, so every one
/// counted was asked for by a rule.
pub const FAULT_STATUS: u16 = 555;
/// Percentage of web's requests the fault-injection variant aborts.
pub const FAULT_PERCENT: f64 = 2.0;

pub fn services() -> Vec<(&'static str, String)> {
    let port = PORT.to_string();
    vec![
        ("plain.yaml", service("plain", PLAIN, 80, &port, "TCP", "")),
        ("web.yaml", service("web", WEB, 80, &port, "TCP", "")),
    ]
}

/// The endpoints of a Service backed by pods `a` and `b` at churn step `step`: both ready, `b`
/// not ready, both, `a` gone; the cycle repeats.
pub fn endpoints(name: &str, step: u64, a: Ipv4Addr, b: Ipv4Addr) -> String {
    let eps = match step % 4 {
        0 | 2 => vec![Ep::ready(a), Ep::ready(b)],
        1 => vec![Ep::ready(a), Ep::not_ready(b)],
        _ => vec![Ep::ready(b)],
    };
    endpoint_slice(name, PORT, "TCP", &eps)
}

/// How many VirtualService variants [`virtual_service`] cycles through.
pub const VS_VARIANTS: u64 = 4;

/// web's VirtualService, variant `v`: retries; a fault abort of [`FAULT_PERCENT`] %; a
/// header-matched route with a rewrite and header operations before a catch-all; a timeout and
/// a weighted split over the same Service.
pub fn virtual_service(v: u64) -> String {
    let head = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: web\nspec:\n  hosts:\n  - web\n  http:\n";
    let body = match v % VS_VARIANTS {
        0 => "  - route:\n    - destination:\n        host: web\n    retries:\n      attempts: 2\n      retryOn: connect-failure,reset,gateway-error\n".to_owned(),
        1 => format!(
            "  - fault:\n      abort:\n        httpStatus: {FAULT_STATUS}\n        percentage:\n          value: {FAULT_PERCENT}\n    route:\n    - destination:\n        host: web\n"
        ),
        2 => "  - match:\n    - headers:\n        x-soak:\n          exact: canary\n    rewrite:\n      uri: /echo\n    route:\n    - destination:\n        host: web\n  - headers:\n      request:\n        set:\n          x-soak-route: rest\n      response:\n        remove:\n        - date\n    route:\n    - destination:\n        host: web\n".to_owned(),
        _ => "  - timeout: 5s\n    route:\n    - destination:\n        host: web\n        port:\n          number: 80\n      weight: 60\n    - destination:\n        host: web.default.svc.cluster.local\n      weight: 40\n".to_owned(),
    };
    format!("{head}{body}")
}

/// How many DestinationRule variants [`destination_rule`] cycles through.
pub const DR_VARIANTS: u64 = 4;

/// web's DestinationRule, variant `v`: round robin; least request with connection pool
/// settings far above the load; consistent hashing on a header; a ring hash on the source IP.
pub fn destination_rule(v: u64) -> String {
    let head = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: web\nspec:\n  host: web\n  trafficPolicy:\n";
    let body = match v % DR_VARIANTS {
        0 => "    loadBalancer:\n      simple: ROUND_ROBIN\n",
        1 => "    loadBalancer:\n      simple: LEAST_REQUEST\n    connectionPool:\n      tcp:\n        maxConnections: 1000\n        connectTimeout: 2s\n      http:\n        http1MaxPendingRequests: 1000\n        maxRetries: 100\n",
        2 => "    loadBalancer:\n      consistentHash:\n        httpHeaderName: x-user\n",
        _ => "    loadBalancer:\n      consistentHash:\n        useSourceIp: true\n        ringHash:\n          minimumRingSize: 1024\n",
    };
    format!("{head}{body}")
}

/// The files of the starting (and final) state.
pub fn baseline(
    plain: (Ipv4Addr, Ipv4Addr),
    web: (Ipv4Addr, Ipv4Addr),
) -> Vec<(&'static str, String)> {
    let mut files = services();
    files.push(("plain-eps.yaml", endpoints("plain", 0, plain.0, plain.1)));
    files.push(("web-eps.yaml", endpoints("web", 0, web.0, web.1)));
    files.push(("web-vs.yaml", virtual_service(0)));
    files.push(("web-dr.yaml", destination_rule(0)));
    files
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every state the soak writes is valid: an edit the agent rejected would keep the last good
    /// object and the soak would change nothing.
    #[test]
    fn every_variant_parses_as_the_manifests_source_reads_it() {
        let (a, b) = (Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 0, 3));
        let mut files: Vec<String> = services().into_iter().map(|(_, y)| y).collect();
        files.extend((0..4).map(|s| endpoints("web", s, a, b)));
        files.extend((0..VS_VARIANTS).map(virtual_service));
        files.extend((0..DR_VARIANTS).map(destination_rule));
        for y in &files {
            let (parsed, notices) =
                meshpath_source::manifests::parse_file_noting(Path::new("s.yaml"), y);
            let parsed = parsed.unwrap_or_else(|e| panic!("{y}\n{e:?}"));
            assert_eq!(parsed.len(), 1, "{y}");
            assert!(notices.is_empty(), "{y}\n{notices:?}");
        }
    }
}
