//! `exportTo`: a VirtualService routes only the clients of the namespaces it is exported to;
//! the others get the next VirtualService's routes, else plain forwarding.

use super::{addr, ok, weights, CLUSTER};

fn vs(name: &str, namespace: &str, export: &str, subset: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  \
             hosts: [reviews.default.svc.cluster.local]\n  exportTo: {export}\n  http:\n  - route:\n    \
             - destination: {{host: reviews.default.svc.cluster.local, subset: {subset}}}\n")
}

#[test]
fn a_restricted_virtual_service_chains_to_the_next_one() {
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("a.yaml", &vs("a", "team", "[\".\"]", "v1")),
        ("b.yaml", &vs("b", "web", "[\"*\"]", "v2")),
        ("c.yaml", &vs("c", "zzz", "[\"*\"]", "v3")),
    ]);
    let head = &out.config.listeners[&addr([10, 96, 0, 20], 9080)];
    assert_eq!(weights(&head.http[0].action), [(Some("v1"), 100)]);
    assert_eq!(
        head.export
            .to
            .as_ref()
            .map(|t| t.iter().cloned().collect::<Vec<_>>()),
        Some(vec!["team".to_owned()])
    );
    let next = head
        .export
        .otherwise
        .as_deref()
        .expect("the others' routes");
    assert_eq!(weights(&next.http[0].action), [(Some("v2"), 100)]);
    // `b` is exported everywhere: `c` is never reached.
    assert!(next.export.to.is_none() && next.export.otherwise.is_none());
    assert_eq!(
        weights(&head.for_client(Some("team")).http[0].action),
        [(Some("v1"), 100)]
    );
    assert_eq!(
        weights(&head.for_client(Some("web")).http[0].action),
        [(Some("v2"), 100)]
    );
    assert_eq!(
        weights(&head.for_client(None).http[0].action),
        [(Some("v2"), 100)]
    );
}

#[test]
fn clients_nothing_is_exported_to_get_plain_forwarding() {
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("a.yaml", &vs("a", "team", "[\".\", \"ops\"]", "v1")),
    ]);
    let head = &out.config.listeners[&addr([10, 96, 0, 20], 9080)];
    assert!(head.for_client(Some("ops")).http.len() == 1);
    let others = head.for_client(Some("web"));
    assert!(others.http.is_empty(), "plain forwarding");
    assert!(out.config.clusters.contains_key(&others.default_cluster));
}
