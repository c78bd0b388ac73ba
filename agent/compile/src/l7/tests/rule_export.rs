//! DestinationRule `exportTo` and namespace scope: each client namespace gets the rule Istio's
//! sidecar scope picks for it; the kernel and clients of unknown namespace get the default.

use meshpath_model::l7::{LoadBalancer, RuleView, ServiceRoutes};
use meshpath_model::ObjectRef;

use super::{addr, key, ok, weights, CLUSTER};
use crate::l7::needs_proxy;

fn dr(name: &str, namespace: &str, export: &str, lb: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  \
             host: my-svc.default.svc.cluster.local\n  exportTo: {export}\n  trafficPolicy:\n    loadBalancer: {{simple: {lb}}}\n  \
             subsets:\n  - name: {name}\n    labels: {{app: my-svc}}\n")
}

fn my_svc(out: &crate::l7::L7Compiled) -> &ServiceRoutes {
    &out.config.listeners[&addr([10, 96, 0, 30], 80)]
}

/// The load balancer of the cluster a client in `ns` is forwarded to.
fn lb_for(out: &crate::l7::L7Compiled, ns: Option<&str>) -> Option<String> {
    let routes = my_svc(out).for_client(ns);
    let cluster = out.config.clusters.get(&routes.default_cluster)?;
    Some(format!("{:?}", cluster.policy.load_balancer))
}

fn rule(ns: &str, name: &str) -> Option<RuleView> {
    Some(RuleView::Rule(ObjectRef::new(ns, name)))
}

#[test]
fn a_private_rule_applies_to_its_namespace_only() {
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("dr.yaml", &dr("own", "default", "[\".\"]", "LEAST_REQUEST")),
    ]);
    assert_eq!(
        lb_for(&out, Some("default")).as_deref(),
        Some("LeastRequest")
    );
    // Clients elsewhere (or unknown) see no rule: Istio's default, round robin.
    assert_eq!(lb_for(&out, Some("web")).as_deref(), Some("RoundRobin"));
    assert_eq!(lb_for(&out, None).as_deref(), Some("RoundRobin"));
    let own = my_svc(&out).for_client(Some("default"));
    assert_eq!(own.default_cluster.view, rule("default", "own"));
    // Only the proxy tells the namespaces apart: the port is steered.
    assert!(needs_proxy(&out.config).iter().any(|a| a.port == 80));
}

#[test]
fn a_rule_exported_to_a_list_applies_to_those_namespaces() {
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        (
            "dr.yaml",
            &dr("some", "default", "[\"web\", \"ops\"]", "RANDOM"),
        ),
    ]);
    for ns in ["web", "ops"] {
        assert_eq!(lb_for(&out, Some(ns)).as_deref(), Some("Random"), "{ns}");
        let view = &my_svc(&out).for_client(Some(ns)).default_cluster.view;
        assert_eq!(view, &rule("default", "some"));
    }
    // Not exported to its own namespace either (Istio: only `.` or the name makes it so).
    assert_eq!(lb_for(&out, Some("default")).as_deref(), Some("RoundRobin"));
    assert_eq!(lb_for(&out, None).as_deref(), Some("RoundRobin"));
}

#[test]
fn the_clients_namespace_rule_comes_first_then_the_services_then_the_roots() {
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("svc.yaml", &dr("svc", "default", "[\"*\"]", "RANDOM")),
        ("web.yaml", &dr("web", "web", "[\".\"]", "LEAST_REQUEST")),
        (
            "root.yaml",
            &dr("root", "istio-system", "[\"*\"]", "ROUND_ROBIN"),
        ),
    ]);
    assert_eq!(lb_for(&out, Some("web")).as_deref(), Some("LeastRequest"));
    assert_eq!(lb_for(&out, Some("ops")).as_deref(), Some("Random"));
    assert_eq!(lb_for(&out, None).as_deref(), Some("Random"));
    // A root namespace client: only root's private rules come before the Service's.
    assert_eq!(
        my_svc(&out)
            .for_client(Some("istio-system"))
            .default_cluster
            .view,
        None
    );
}

#[test]
fn the_root_namespaces_exported_rule_is_the_fallback() {
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        (
            "root.yaml",
            &dr("root", "istio-system", "[\"*\"]", "LEAST_REQUEST"),
        ),
        (
            "priv.yaml",
            &dr("priv", "istio-system", "[\".\"]", "RANDOM"),
        ),
    ]);
    assert_eq!(lb_for(&out, Some("web")).as_deref(), Some("LeastRequest"));
    assert_eq!(lb_for(&out, None).as_deref(), Some("LeastRequest"));
    // The root namespace's private rule serves root namespace clients.
    assert_eq!(
        lb_for(&out, Some("istio-system")).as_deref(),
        Some("Random")
    );
}

#[test]
fn subsets_follow_the_rule_the_client_sees() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: default}\nspec:\n  \
              hosts: [my-svc]\n  http:\n  - route:\n    - destination: {host: my-svc, subset: own}\n";
    let model = super::model(&[
        ("cluster.yaml", CLUSTER),
        ("dr.yaml", &dr("own", "default", "[\".\"]", "LEAST_REQUEST")),
        ("vs.yaml", vs),
    ]);
    let (out, warnings) = super::run(&model, &crate::l7::L7Compiled::default());
    // The default view (clients elsewhere) has no rule, hence no subset `own`: a warning.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let head = my_svc(&out);
    let own = head.for_client(Some("default"));
    assert_eq!(weights(&own.http[0].action), [(Some("own"), 100)]);
    let cluster = match &own.http[0].action {
        meshpath_model::l7::RouteAction::Route(w) => w[0].cluster.clone(),
        _ => unreachable!(),
    };
    assert!(out.config.clusters.contains_key(&cluster), "{cluster:?}");
    // Elsewhere, the subset is not defined: no cluster (503 `NC` at the proxy).
    let other = head.for_client(Some("web"));
    let missing = match &other.http[0].action {
        meshpath_model::l7::RouteAction::Route(w) => w[0].cluster.clone(),
        _ => unreachable!(),
    };
    assert!(!out.config.clusters.contains_key(&missing), "{missing:?}");
}

#[test]
fn without_export_to_every_client_shares_one_cluster() {
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("dr.yaml", &dr("all", "default", "[]", "LEAST_REQUEST")),
    ]);
    let head = my_svc(&out);
    assert!(head.export.to.is_none() && head.export.otherwise.is_none());
    let cluster = &out.config.clusters[&key("my-svc", 80, None)];
    assert!(matches!(
        cluster.policy.load_balancer,
        LoadBalancer::LeastRequest
    ));
}
