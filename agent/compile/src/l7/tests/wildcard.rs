//! Wildcard hosts: the most specific wildcard VirtualService or DestinationRule applies to a
//! Service, and a wildcard destination is a ServiceEntry host meshpath does not have (503).

use meshpath_model::l7::{LoadBalancer, RouteAction};
use meshpath_model::ObjectRef;

use super::{addr, key, model, ok, run, weights, CLUSTER};
use crate::l7::{L7Compiled, L7Error};

fn vs(name: &str, host: &str, subset: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
             hosts: [\"{host}\"]\n  http:\n  - route:\n    - destination: {{host: reviews.default.svc.cluster.local, subset: {subset}}}\n")
}

#[test]
fn the_most_specific_wildcard_virtual_service_owns_a_service() {
    // `a-all` comes first by name, but `b-default` is more specific for default's Services.
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("a.yaml", &vs("a-all", "*.svc.cluster.local", "v1")),
        (
            "b.yaml",
            &vs("b-default", "*.default.svc.cluster.local", "v2"),
        ),
    ]);
    let reviews = &out.config.listeners[&addr([10, 96, 0, 20], 9080)];
    assert_eq!(weights(&reviews.http[0].action), [(Some("v2"), 100)]);
    assert_eq!(
        reviews.http[0].virtual_service.as_deref(),
        Some("b-default")
    );
    // An exact host beats every wildcard.
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        (
            "b.yaml",
            &vs("b-default", "*.default.svc.cluster.local", "v2"),
        ),
        ("c.yaml", &vs("c-exact", "reviews", "v3")),
    ]);
    let reviews = &out.config.listeners[&addr([10, 96, 0, 20], 9080)];
    assert_eq!(weights(&reviews.http[0].action), [(Some("v3"), 100)]);
    // `*-svc` (Istio's wildcard label) covers the names ending in `-svc` only.
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        (
            "d.yaml",
            &vs("d-label", "*-svc.default.svc.cluster.local", "v1"),
        ),
    ]);
    let my_svc = &out.config.listeners[&addr([10, 96, 0, 30], 80)];
    assert_eq!(weights(&my_svc.http[0].action), [(Some("v1"), 100)]);
    let reviews = &out.config.listeners[&addr([10, 96, 0, 20], 9080)];
    assert!(reviews.http.is_empty(), "reviews is not covered by *-svc");
}

#[test]
fn the_most_specific_wildcard_destination_rule_applies() {
    let dr = |name: &str, host: &str, lb: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
                 host: \"{host}\"\n  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}\n")
    };
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("a.yaml", &dr("a-all", "*.cluster.local", "RANDOM")),
        (
            "b.yaml",
            &dr("b-default", "*.default.svc.cluster.local", "LEAST_REQUEST"),
        ),
    ]);
    // golang-app-gateway-svc has no DestinationRule of its own.
    let cluster = &out.config.clusters[&super::ClusterKey {
        service: ObjectRef::new("default", "golang-app-gateway-svc"),
        port: 8080,
        subset: None,
        view: None,
    }];
    assert!(
        matches!(cluster.policy.load_balancer, LoadBalancer::LeastRequest),
        "{:?}",
        cluster.policy.load_balancer
    );
}

#[test]
fn a_wildcard_destination_is_a_warning_and_a_missing_cluster() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ext, namespace: default}\nspec:\n  \
                hosts: [reviews]\n  http:\n  - match: [{uri: {prefix: /ext}}]\n    route:\n    - destination: {host: \"*-foo.baz\"}\n  \
                - route:\n    - destination: {host: reviews, subset: v1}\n";
    let (out, errors) = run(
        &model(&[("cluster.yaml", CLUSTER), ("vs.yaml", text)]),
        &L7Compiled::default(),
    );
    assert!(
        matches!(&errors[..], [e @ L7Error::WildcardDestination { .. }] if e.is_warning()),
        "{errors:?}"
    );
    let reviews = &out.config.listeners[&addr([10, 96, 0, 20], 9080)];
    let RouteAction::Route(w) = &reviews.http[0].action else {
        panic!("a route");
    };
    assert!(
        !out.config.clusters.contains_key(&w[0].cluster),
        "no such cluster"
    );
    assert_eq!(weights(&reviews.http[1].action), [(Some("v1"), 100)]);
    assert!(out
        .config
        .clusters
        .contains_key(&key("reviews", 9080, Some("v1"))));
}
