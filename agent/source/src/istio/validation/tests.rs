//! Istio's rules on small documents: every problem is reported, with its field.

use serde_json::json;

use super::{destination_rule, header_value, names, virtual_service, Problem};

fn errors(findings: super::Findings) -> Vec<(String, String)> {
    findings
        .errors
        .into_iter()
        .map(|Problem { path, message }| (path, message))
        .collect()
}

#[test]
fn every_problem_of_a_virtual_service_is_reported_with_its_field() {
    let vs = json!({
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": {
            "hosts": ["*"],
            "http": [{
                "match": [{"uri": {"prefix": ""}, "method": {"prefix": ""}}],
                "timeout": "1500us",
                "route": [{"destination": {"host": "r", "port": {"number": 0}}, "weight": -1}]
            }]
        }
    });
    assert_eq!(
        errors(virtual_service(&vs)),
        [
            (
                "spec.hosts[0]".into(),
                "wildcard host * is not allowed for virtual services bound to the mesh gateway"
                    .into()
            ),
            (
                "spec.http[0].match[0].method".into(),
                "\"method\": prefix string match should not be empty".into()
            ),
            (
                "spec.http[0].route[0].destination.port.number".into(),
                "port number 0 must be in the range 1..65535".into()
            ),
            (
                "spec.http[0].route[0].weight".into(),
                "weight -1 < 0".into()
            ),
            (
                "spec.http[0].timeout".into(),
                "only durations to ms precision are supported".into()
            ),
        ]
    );
}

#[test]
fn what_istio_accepts_has_no_errors() {
    let delegate = json!({"metadata": {"name": "d"}, "spec": {"http": [
        {"route": [{"destination": {"host": "*-foo.baz"}, "weight": 30},
                   {"destination": {"host": "a.b"}, "weight": 30}]},
        {"match": [{"withoutHeaders": {"x": {"regex": "*"}}}],
         "fault": {"abort": {"grpcStatus": "NOT_FOUND", "percentage": {"value": 1}}},
         "route": [{"destination": {"host": "a.b"}}]},
        {"directResponse": {"status": 200, "body": {"bytes": "aGk="}}}
    ]}});
    let findings = virtual_service(&delegate);
    assert_eq!(errors(findings), []);
    let dr = json!({"metadata": {"name": "d"}, "spec": {"host": "*.example.com",
        "trafficPolicy": {"connectionPool": {"tcp": {"idleTimeout": "0s"}}}}});
    assert_eq!(errors(destination_rule(&dr)), []);
}

#[test]
fn destination_rule_policies_are_checked_where_meshpath_does_not_enforce_them() {
    let dr = json!({"metadata": {"name": "d"}, "spec": {"host": "r",
        "trafficPolicy": {
            "tls": {"mode": "MUTUAL"},
            "portLevelSettings": [{"loadBalancer": {"simple": "RANDOM"}}],
            "loadBalancer": {"warmup": {"duration": "10s", "aggression": 0}}
        },
        "subsets": [{"name": "v1", "trafficPolicy": {}}, {"name": "v1"}]}});
    assert_eq!(
        errors(destination_rule(&dr)),
        [
            (
                "spec.trafficPolicy.loadBalancer.warmup.aggression".into(),
                "aggression should be greater than 0".into()
            ),
            (
                "spec.trafficPolicy.tls".into(),
                "client certificate required for mutual tls".into()
            ),
            (
                "spec.trafficPolicy.tls".into(),
                "private key required for mutual tls".into()
            ),
            (
                "spec.trafficPolicy.portLevelSettings[0]".into(),
                "portTrafficPolicy must have valid port".into()
            ),
            (
                "spec.subsets[0].trafficPolicy".into(),
                "traffic policy must have at least one field".into()
            ),
            (
                "spec.subsets[1].name".into(),
                "duplicate subset names: v1".into()
            ),
        ]
    );
}

#[test]
fn header_values_follow_envoys_formatter() {
    for ok in [
        "foo",
        "%HOSTNAME%",
        "100%%",
        "prefix %HOSTNAME% suffix",
        "%REQ(x-a)%",
        "%UPSTREAM_METADATA([\"a\", \"b\"])%",
    ] {
        assert_eq!(header_value::check(ok), Ok(()), "{ok}");
    }
    for bad in ["abc%123", "%START_TIME%%", "100%", "%REQ(x", "a\u{1}b"] {
        assert!(header_value::check(bad).is_err(), "{bad}");
    }
}

#[test]
fn wildcard_hosts_and_overlaps() {
    for ok in [
        "*",
        "*.foo.bar",
        "*-foo.baz",
        "*foo.baz",
        "istio.io.",
        "foo",
    ] {
        assert_eq!(names::wildcard_domain(ok), Ok(()), "{ok}");
    }
    for bad in ["", "foo.*.bar", "foo.ba!r", "foo.123", "*.*"] {
        assert!(names::wildcard_domain(bad).is_err(), "{bad}");
    }
    assert!(names::hosts_overlap("*.foo.bar", "*.bar"));
    assert!(names::hosts_overlap("a.bar", "*.bar"));
    assert!(!names::hosts_overlap("a.bar", "b.bar"));
}
