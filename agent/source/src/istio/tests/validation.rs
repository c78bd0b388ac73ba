//! Each validation rule: the object is rejected, and the error names object, field and reason.

use super::{dr_with, errors, vs_with};

fn one_error(text: &str) -> String {
    let errors = errors(text);
    let [error] = errors.as_slice() else {
        panic!("one error: {errors:#?}")
    };
    // The document's first line, or the field's line (with its column) for Istio's rules.
    assert!(error.line().is_some_and(|l| l >= 1), "{error}: no line");
    error.to_string()
}

#[test]
fn validation_errors_name_object_field_and_reason() {
    const ROUTE: &str = "    route:\n    - destination: {host: r}\n";
    let cases = [
        (
            vs_with("  - route:\n    - destination: {host: r, subset: a}\n      weight: -20\n    - destination: {host: r, subset: b}\n      weight: 70\n"),
            "VirtualService default/r: spec.http[0].route[0].weight: weight -20 < 0",
        ),
        (
            vs_with("  - route:\n    - destination: {host: r, subset: a}\n    - destination: {host: r, subset: b}\n"),
            "VirtualService default/r: spec.http[0].route: total destination weight = 0",
        ),
        (
            vs_with(&format!("  - timeout: 10 s\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].timeout: \"10 s\" is not a duration (write e.g. 7s, 0.5s, 100ms, 5m, 1h): unknown unit (use ns, us, ms, s, m or h)",
        ),
        (
            vs_with(&format!("  - match:\n    - uri: {{regex: \"/api/(v1\"}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].match[0].uri.regex: \"uri\": error parsing regexp: unclosed group; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)",
        ),
        (
            vs_with(&format!("  - match:\n    - headers: {{x-a: {{exact: a, prefix: b}}}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].match[0].headers.x-a: set exactly one of exact, prefix, regex",
        ),
        (
            vs_with(&format!("  - fault:\n      abort:\n        httpStatus: 503\n        percentage: {{value: 150}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].fault.abort.percentage: percentage 150 is neither 0.0, nor in range [0.0001, 100.0]",
        ),
        (
            vs_with(&format!("  - fault:\n      delay: {{fixedDelay: 1s, percent: 120}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].fault.delay.percent: must be between 0 and 100, got 120",
        ),
        (
            vs_with(&format!("  - fault:\n      abort: {{httpStatus: 601, percentage: {{value: 1}}}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].fault.abort.httpStatus: HTTP status 601 is not in range 200-599",
        ),
        (
            vs_with(&format!("  - fault:\n      delay: {{fixedDelay: 0s, percentage: {{value: 1}}}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].fault.delay.fixedDelay: duration must be greater than 1ms",
        ),
        (
            vs_with(&format!("  - mirror: {{host: r}}\n    mirrorPercentage: {{value: 100.5}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].mirrorPercentage: mirror_percentage must have a max value of 100 (it has 100.500000)",
        ),
        (
            vs_with(&format!("  - retries: {{attempts: 3, retryOn: \"5xx,sometimes\"}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].retries.retryOn: \"sometimes\" is not a valid retryOn policy",
        ),
        (
            vs_with("  - name: nowhere\n"),
            "VirtualService default/r: spec.http[0]: HTTP route, redirect or direct_response is required",
        ),
        (
            vs_with("  - route:\n    - destination: {host: \"*\"}\n"),
            "VirtualService default/r: spec.http[0].route[0].destination.host: invalid destination host *",
        ),
        (
            dr_with("  trafficPolicy:\n    loadBalancer: {simple: FASTEST}\n"),
            "DestinationRule prod/d: spec.trafficPolicy.loadBalancer.simple: must be one of ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM, PASSTHROUGH, got \"FASTEST\"",
        ),
        (
            dr_with("  subsets:\n  - name: v1\n    trafficPolicy:\n      outlierDetection: {interval: 10}\n"),
            "DestinationRule prod/d: spec.subsets[0].trafficPolicy.outlierDetection.interval: invalid type: integer `10`, expected a string",
        ),
        (
            dr_with("  trafficPolicy:\n    outlierDetection: {baseEjectionTime: 30 s}\n"),
            "DestinationRule prod/d: spec.trafficPolicy.outlierDetection.baseEjectionTime: \"30 s\" is not a duration (write e.g. 7s, 0.5s, 100ms, 5m, 1h): unknown unit (use ns, us, ms, s, m or h)",
        ),
        (
            dr_with("  trafficPolicy:\n    outlierDetection: {maxEjectionPercent: 101}\n"),
            "DestinationRule prod/d: spec.trafficPolicy.outlierDetection.maxEjectionPercent: percentage 101 is not in range 0..100",
        ),
        (
            dr_with("  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v1, labels: {version: v2}}\n"),
            "DestinationRule prod/d: spec.subsets[1].name: duplicate subset names: v1",
        ),
        (
            dr_with("  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: x-user, useSourceIp: true}\n"),
            "DestinationRule prod/d: spec.trafficPolicy.loadBalancer.consistentHash: set exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(
            one_error(&text),
            format!("istio.yaml: {expected}"),
            "for:\n{text}"
        );
    }
}

#[test]
fn wrong_type_names_the_field_path() {
    let text = vs_with("  - route:\n    - destination: {host: r}\n      weight: \"20\"\n");
    let errors = errors(&text);
    assert_eq!(errors[0].field(), Some("spec.http[0].route[0].weight"));
    assert_eq!(
        errors[0].object().map(ToString::to_string).as_deref(),
        Some("VirtualService default/r")
    );
}
