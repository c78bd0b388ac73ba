//! Each validation rule: the object is rejected, and the error names object, field and reason.

use super::{dr_with, errors, vs_with};

fn one_error(text: &str) -> String {
    let errors = errors(text);
    let [error] = errors.as_slice() else {
        panic!("one error: {errors:#?}")
    };
    assert_eq!(error.line(), Some(1));
    error.to_string()
}

#[test]
fn validation_errors_name_object_field_and_reason() {
    const ROUTE: &str = "    route:\n    - destination: {host: r}\n";
    let cases = [
        (
            vs_with("  - route:\n    - destination: {host: r, subset: a}\n      weight: 20\n    - destination: {host: r, subset: b}\n      weight: 70\n"),
            "VirtualService default/r: spec.http[0].route: destination weights sum to 90, they must sum to 100",
        ),
        (
            vs_with("  - route:\n    - destination: {host: r, subset: a}\n    - destination: {host: r, subset: b}\n"),
            "VirtualService default/r: spec.http[0].route: destination weights sum to 0, they must sum to 100",
        ),
        (
            vs_with(&format!("  - timeout: 10 s\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].timeout: \"10 s\" is not a duration (write e.g. 7s, 0.5s, 100ms, 5m, 1h): unknown unit (use ns, us, ms, s, m or h)",
        ),
        (
            vs_with(&format!("  - match:\n    - uri: {{regex: \"/api/(v1\"}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].match[0].uri.regex: invalid regular expression \"/api/(v1\": unclosed group",
        ),
        (
            vs_with(&format!("  - match:\n    - headers: {{x-a: {{exact: a, prefix: b}}}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].match[0].headers.x-a: set exactly one of exact, prefix, regex",
        ),
        (
            vs_with(&format!("  - fault:\n      abort:\n        httpStatus: 503\n        percentage: {{value: 150}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].fault.abort.percentage.value: must be between 0 and 100, got 150",
        ),
        (
            vs_with(&format!("  - fault:\n      delay: {{fixedDelay: 1s, percent: 120}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].fault.delay.percent: must be between 0 and 100, got 120",
        ),
        (
            vs_with(&format!("  - fault:\n      abort: {{httpStatus: 600, percentage: {{value: 1}}}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].fault.abort.httpStatus: must be between 200 and 599, got 600",
        ),
        (
            vs_with(&format!("  - fault:\n      delay: {{fixedDelay: 0s, percentage: {{value: 1}}}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].fault.delay.fixedDelay: \"0s\" must be at least 1ms",
        ),
        (
            vs_with(&format!("  - mirror: {{host: r}}\n    mirrorPercentage: {{value: 100.5}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].mirrorPercentage.value: must be between 0 and 100, got 100.5",
        ),
        (
            vs_with(&format!("  - retries: {{attempts: 3, retryOn: \"5xx,sometimes\"}}\n{ROUTE}")),
            "VirtualService default/r: spec.http[0].retries.retryOn: must be one of 5xx, gateway-error, connect-failure, reset, retriable-4xx, an HTTP status code, or another Envoy retry condition (refused-stream, cancelled, ...), got \"sometimes\"",
        ),
        (
            vs_with("  - name: nowhere\n"),
            "VirtualService default/r: spec.http[0]: set exactly one of route, redirect, directResponse",
        ),
        (
            vs_with("  - route:\n    - destination: {host: \"*.example.com\"}\n"),
            "VirtualService default/r: spec.http[0].route[0].destination.host: \"*.example.com\" is not a valid host: a destination cannot be a wildcard",
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
            "DestinationRule prod/d: spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be between 0 and 100, got 101",
        ),
        (
            dr_with("  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v1, labels: {version: v2}}\n"),
            "DestinationRule prod/d: spec.subsets[1].name: duplicate value \"v1\" (also at spec.subsets[0].name)",
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
