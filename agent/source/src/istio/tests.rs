//! Parsing and validation of Istio objects, through the manifests source's `parse_file` (so the
//! dispatch by apiVersion/kind and the error plumbing are covered too).

mod policy;
mod route_actions;
mod validation;

use std::path::Path;
use std::time::Duration;

use meshpath_model::l7::RetryOn;

use super::model::*;
use super::Warning;
use crate::{parse_file, ParsedObject, SourceError};

const WEIGHTED: &str = include_str!("testdata/weighted.yaml");
const JASON: &str = include_str!("testdata/jason.yaml");
const LOAD_BALANCING: &str = include_str!("testdata/load_balancing.yaml");
const CIRCUIT_BREAKING: &str = include_str!("testdata/circuit_breaking.yaml");
const FAULT_ABORT: &str = include_str!("testdata/fault_abort.yaml");
const FAULT_DELAY: &str = include_str!("testdata/fault_delay.yaml");
const MIRROR: &str = include_str!("testdata/mirror.yaml");

pub(super) fn parse(text: &str) -> Vec<ParsedObject> {
    parse_file(Path::new("istio.yaml"), text).unwrap_or_else(|errors| {
        panic!(
            "unexpected errors: {:#?}",
            errors.iter().map(ToString::to_string).collect::<Vec<_>>()
        )
    })
}

pub(super) fn errors(text: &str) -> Vec<SourceError> {
    match parse_file(Path::new("istio.yaml"), text) {
        Ok(objects) => panic!("expected errors, got {objects:#?}"),
        Err(errors) => errors,
    }
}

pub(super) fn vs(text: &str) -> VirtualService {
    match parse(text).as_slice() {
        [ParsedObject::VirtualService(vs)] => vs.clone(),
        other => panic!("not one VirtualService: {other:#?}"),
    }
}

fn dr(text: &str) -> DestinationRule {
    match parse(text).as_slice() {
        [ParsedObject::DestinationRule(dr)] => (**dr).clone(),
        other => panic!("not one DestinationRule: {other:#?}"),
    }
}

fn dest(host: &str, subset: &str) -> Destination {
    Destination {
        host: host.into(),
        subset: Some(subset.into()),
        port: None,
    }
}

const SPRINGBOOT: &str = "springboot-app-svc.default.svc.cluster.local";

#[test]
fn seed_weighted_20_80() {
    let vs = vs(WEIGHTED);
    assert_eq!(vs.id.to_string(), "default/springboot-app-svc");
    assert_eq!(vs.origin.as_deref(), Some("istio.yaml:2"));
    assert_eq!(vs.hosts, [SPRINGBOOT]);
    let [route] = vs.http.as_slice() else {
        panic!("one route")
    };
    assert!(route.matches.is_empty());
    assert_eq!(
        route.action,
        Action::Route(vec![
            (dest(SPRINGBOOT, "v1"), 20),
            (dest(SPRINGBOOT, "v2"), 80)
        ])
    );
}

#[test]
fn seed_jason_header_match_v1alpha3() {
    let vs = vs(JASON);
    assert_eq!(vs.hosts, ["reviews"]);
    let [jason, rest] = vs.http.as_slice() else {
        panic!("two routes")
    };
    assert_eq!(
        jason.matches[0].headers,
        [(
            "end-user".to_owned(),
            Some(StringMatch::Exact("jason".into()))
        )]
    );
    assert_eq!(
        jason.action,
        Action::Route(vec![(dest("reviews", "v2"), 100)])
    );
    assert!(rest.matches.is_empty());
    assert_eq!(
        rest.action,
        Action::Route(vec![(dest("reviews", "v3"), 100)])
    );
}

#[test]
fn seed_load_balancing_subsets() {
    let dr = dr(LOAD_BALANCING);
    assert_eq!(
        (dr.id.to_string().as_str(), dr.host.as_str()),
        ("default/my-destination-rule", "my-svc")
    );
    assert_eq!(dr.traffic_policy.load_balancer, Some(LoadBalancer::Random));
    let [v1, v2, v3] = dr.subsets.as_slice() else {
        panic!("three subsets")
    };
    assert_eq!(
        (v1.name.as_str(), v1.labels["version"].as_str()),
        ("v1", "v1")
    );
    assert_eq!(v1.traffic_policy, TrafficPolicy::default());
    assert_eq!(
        v2.traffic_policy.load_balancer,
        Some(LoadBalancer::RoundRobin)
    );
    assert_eq!(
        v3.traffic_policy.load_balancer,
        Some(LoadBalancer::ConsistentHash {
            key: HashKey::Cookie {
                name: "user".into(),
                path: None,
                ttl: Some(Duration::ZERO)
            },
            algorithm: HashAlgorithm::RingHash {
                minimum_ring_size: 1024
            },
        })
    );
}

#[test]
fn seed_circuit_breaking_duplicate_key_names_line_and_key() {
    let errors = errors(CIRCUIT_BREAKING);
    let [error] = errors.as_slice() else {
        panic!("one error: {errors:#?}")
    };
    assert_eq!(error.line(), Some(19));
    assert_eq!(
        error.to_string(),
        "istio.yaml: invalid YAML: duplicate mapping key `interval` is not allowed here at line 19, column 7"
    );
}

#[test]
fn seed_circuit_breaking_with_one_interval() {
    let fixed = CIRCUIT_BREAKING.replace("      interval: 5m", "      # interval: 5m");
    let dr = dr(&fixed);
    let pool = dr.traffic_policy.connection_pool.expect("pool");
    assert_eq!(
        (
            pool.max_connections,
            pool.http1_max_pending_requests,
            pool.max_requests_per_connection
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(
        dr.traffic_policy.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx_errors: Some(1),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(180),
            max_ejection_percent: 100,
            min_health_percent: 0,
        })
    );
}

#[test]
fn seed_faults_and_mirror() {
    let abort = vs(FAULT_ABORT);
    assert_eq!(
        abort.http[0].fault,
        Some(Fault {
            delay: None,
            abort: Some((Abort::Http(500), Percent(100.0)))
        })
    );
    assert_eq!(abort.http[0].matches[0].headers[0].0, "end-user");
    assert_eq!(abort.http[1].fault, None);

    let delay = vs(FAULT_DELAY);
    assert_eq!(
        delay.http[0].fault,
        Some(Fault {
            delay: Some((Duration::from_secs(7), Percent(100.0))),
            abort: None
        })
    );

    let mirror = vs(MIRROR);
    let route = &mirror.http[0];
    assert_eq!(
        route.action,
        Action::Route(vec![(dest(SPRINGBOOT, "v1"), 100)])
    );
    assert_eq!(
        route.mirrors,
        vec![Mirror {
            destination: dest(SPRINGBOOT, "v2"),
            percentage: Percent(10.0)
        }]
    );
}

/// A VirtualService `default/r` whose `spec.http` is `http` (indented as a list under it).
pub(super) fn vs_with(http: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n{http}")
}

pub(super) fn dr_with(spec: &str) -> String {
    format!("apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: d\n  namespace: prod\nspec:\n  host: r\n{spec}")
}

#[test]
fn regexes_are_full_matches_like_envoy() {
    let vs = vs(&vs_with(
        "  - match:\n    - uri: {regex: \"/v[0-9]\"}\n    route:\n    - destination: {host: r}\n",
    ));
    let Some(StringMatch::Regex(p)) = &vs.http[0].matches[0].uri else {
        panic!("regex")
    };
    assert!(p.regex.is_match("/v1"));
    assert!(!p.regex.is_match("/v12"));
    assert!(!p.regex.is_match("x/v1"));
}

#[test]
fn match_forms_presence_and_retries() {
    let vs = vs(&vs_with(
        "  - match:\n    - headers: {X-Canary: {}}\n      withoutHeaders: {x-debug: {prefix: \"1\"}}\n      \
         queryParams: {beta: {}}\n      method: {exact: GET}\n      port: 9080\n      ignoreUriCase: true\n      \
         sourceLabels: {app: web}\n    retries: {attempts: 3, perTryTimeout: 2s, retryOn: \"gateway-error,connect-failure,refused-stream,503\"}\n    \
         timeout: 0.5s\n    route:\n    - destination: {host: r, port: {number: 9080}}\n",
    ));
    let route = &vs.http[0];
    let m = &route.matches[0];
    assert_eq!(m.headers, [("x-canary".to_owned(), None)]);
    assert_eq!(
        m.without_headers,
        [("x-debug".to_owned(), Some(StringMatch::Prefix("1".into())))]
    );
    assert!(
        matches!(&m.query_params[0], (k, StringMatch::Regex(p)) if k == "beta" && p.regex.is_match("anything"))
    );
    assert_eq!(
        (m.port, m.ignore_uri_case, m.source_labels["app"].as_str()),
        (Some(9080), true, "web")
    );
    assert_eq!(route.timeout, Some(Duration::from_millis(500)));
    let retries = route.retries.as_ref().expect("retries");
    assert_eq!(
        retries.retry_on,
        [RetryOn::GatewayError, RetryOn::ConnectFailure]
    );
    assert_eq!(retries.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        route.action,
        Action::Route(vec![(
            Destination {
                host: "r".into(),
                subset: None,
                port: Some(9080)
            },
            100
        )])
    );
}

#[test]
fn unknown_and_unsupported_fields_are_warnings() {
    let text = vs_with(
        "  - corsPolicy: {allowOrigins: [{exact: a}]}\n    match:\n    - uri: {prefix: /}\n      gateways: [edge]\n    route:\n    - destination: {host: r}\n  \
         - retries: {attempts: 1, retryOn: refused-stream}\n    route:\n    - destination: {host: r}\n  gateways: [mesh, edge]\n  exportTo: [\".\"]\n",
    );
    let value = serde_saphyr::from_str::<serde_json::Value>(&text).expect("yaml");
    let (vs, warnings) = super::virtual_service(value).expect("valid");
    // The first route matches only at the `edge` gateway: it is not a mesh route.
    assert_eq!(vs.http.len(), 1);
    assert_eq!(vs.http[0].index, 1);
    assert_eq!(
        warnings,
        [
            Warning::Gateway {
                field: "spec.gateways[1]".into(),
                gateway: "edge".into()
            },
            Warning::NotForMesh {
                field: "spec.http[0].match[0]".into()
            },
            Warning::RetryOn {
                field: "spec.http[1].retries.retryOn".into(),
                value: "refused-stream".into()
            },
        ]
    );

    let dr_text = dr_with("  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n    portLevelSettings:\n    - port: {number: 80}\n      loadBalancer: {simple: RANDOM}\n");
    let value = serde_saphyr::from_str::<serde_json::Value>(&dr_text).expect("yaml");
    let (_, warnings) = super::destination_rule(value).expect("valid");
    assert_eq!(
        warnings,
        [Warning::Ignored {
            field: "spec.trafficPolicy.tls".into()
        },]
    );
}

#[test]
fn gateway_only_virtual_service_has_no_mesh_routes() {
    let text =
        vs_with("  - route:\n    - destination: {host: r}\n  gateways: [istio-system/ingress]\n");
    let vs = vs(&text);
    assert!(vs.http.is_empty() && vs.tcp.is_empty());
}

#[test]
fn fault_without_percentage_injects_nothing_as_in_istio() {
    let text = vs_with(
        "  - fault: {abort: {httpStatus: 503}}\n    route:\n    - destination: {host: r}\n",
    );
    let value = serde_saphyr::from_str::<serde_json::Value>(&text).expect("yaml");
    let (vs, warnings) = super::virtual_service(value).expect("valid");
    assert_eq!(
        vs.http[0].fault.as_ref().and_then(|f| f.abort),
        Some((Abort::Http(503), Percent(0.0)))
    );
    assert_eq!(
        warnings,
        [Warning::NoFaultPercentage {
            field: "spec.http[0].fault.abort".into()
        }]
    );
}

#[test]
fn every_served_version_is_read_and_others_are_skipped() {
    for version in ["v1alpha3", "v1beta1", "v1"] {
        let text = WEIGHTED.replace(
            "networking.istio.io/v1beta1",
            &format!("networking.istio.io/{version}"),
        );
        assert_eq!(parse(&text).len(), 1, "{version}");
    }
    assert!(parse(&WEIGHTED.replace("v1beta1", "v2")).is_empty());
}

#[test]
fn tcp_routes_with_weights_and_ports() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db, namespace: data}\n\
                spec:\n  hosts: [db]\n  tcp:\n  - match: [{port: 5432}]\n    route:\n    - {destination: {host: db, subset: a}, weight: 75}\n    \
                - {destination: {host: db, subset: b}, weight: 25}\n  - match: [{sourceLabels: {app: x}}]\n    route:\n    - destination: {host: db}\n";
    let vs = vs(text);
    assert_eq!(
        vs.tcp.len(),
        1,
        "the sourceLabels-only route cannot apply yet"
    );
    assert_eq!(vs.tcp[0].ports, [5432]);
    assert_eq!(
        vs.tcp[0].route,
        vec![(dest("db", "a"), 75), (dest("db", "b"), 25)]
    );
}
