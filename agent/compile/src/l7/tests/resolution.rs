//! Hosts, ports, subsets and rules resolved across objects; errors and last good.

use std::net::{Ipv4Addr, SocketAddr};

use meshpath_model::l7::RouteAction;
use meshpath_model::Protocol;

use super::{
    addr, endpoint_ips, key, model, ok, run, weights, CLUSTER, JASON, SPRINGBOOT, WEIGHTED,
};
use crate::l7::{FrontendAddr, L7Compiled, L7Error};

#[test]
fn hosts_resolve_in_the_objects_namespace_and_in_every_dns_form() {
    let vs = |name: &str, host: &str, dest: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: web}}\nspec:\n  \
                 hosts: [{host}]\n  http:\n  - route:\n    - destination: {{host: {dest}, subset: v1}}\n")
    };
    for (host, dest) in [
        ("reviews.default", "reviews.default"),
        ("reviews.default.svc", "reviews.default.svc"),
        (
            "reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local",
        ),
    ] {
        let out = ok(&[("cluster.yaml", CLUSTER), ("vs.yaml", &vs("a", host, dest))]);
        let routes = &out.config.listeners[&addr([10, 96, 0, 20], 9080)];
        assert_eq!(
            weights(&routes.http[0].action),
            [(Some("v1"), 100)],
            "{host}"
        );
    }
    // A short name means the VirtualService's own namespace: there is no web/reviews.
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("vs.yaml", &vs("b", "reviews", "reviews.default")),
    ]);
    assert!(super::steered(&out).is_empty());
    let (_, errors) = run(
        &model(&[
            ("cluster.yaml", CLUSTER),
            ("vs.yaml", &vs("c", "reviews.default", "reviews")),
        ]),
        &L7Compiled::default(),
    );
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["vs.yaml:1: VirtualService web/c: spec.http[0].route[0].destination.host: host \"reviews\" names no Service; \
          the VirtualService keeps its previous routes"]
    );
}

#[test]
fn a_subset_not_defined_yet_is_a_warning_and_its_route_a_missing_cluster() {
    let m = model(&[("cluster.yaml", CLUSTER), ("jason.yaml", JASON)]);
    let (good, errors) = run(&m, &L7Compiled::default());
    assert_eq!(errors, []);
    let text = JASON.replace("subset: v3", "subset: v9");
    let (out, errors) = run(
        &model(&[("cluster.yaml", CLUSTER), ("jason.yaml", &text)]),
        &good,
    );
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["jason.yaml:2: VirtualService default/reviews: spec.http[1].route[0].destination.subset: subset \"v9\" of \
          Service default/reviews is not defined (DestinationRule default/reviews has no such subset); requests \
          routed to it get 503 (no cluster) until a DestinationRule defines it"]
    );
    assert!(errors.iter().all(L7Error::is_warning));
    // Applied, not the last good routes: the route names v9, whose cluster the table lacks
    // (the proxy's 503 NC), and the other route still goes to v2.
    let routes = &out.config.listeners[&addr([10, 96, 0, 20], 9080)];
    assert_eq!(weights(&routes.http[0].action), [(Some("v2"), 100)]);
    assert_eq!(weights(&routes.http[1].action), [(Some("v9"), 100)]);
    let clusters = &out.config.clusters;
    assert!(clusters.contains_key(&key("reviews", 9080, Some("v2"))));
    assert!(!clusters.contains_key(&key("reviews", 9080, Some("v9"))));
    assert!(
        !clusters.contains_key(&key("reviews", 9080, Some("v3"))),
        "nothing routes to v3 any more"
    );
    assert!(super::steered(&out).contains(&addr([10, 96, 0, 20], 9080)));

    // Never good before: applied all the same, alongside other VirtualServices.
    let both = model(&[
        ("cluster.yaml", CLUSTER),
        ("jason.yaml", &text),
        ("weighted.yaml", WEIGHTED),
    ]);
    let (fresh, errors) = run(&both, &L7Compiled::default());
    assert_eq!(errors.len(), 1);
    assert!(super::steered(&fresh).contains(&addr(SPRINGBOOT, 8080)));
    assert!(super::steered(&fresh).contains(&addr([10, 96, 0, 20], 9080)));

    // The DestinationRule gains v9 later: the same route now has its cluster, nothing else changed.
    let v3 = "  - {name: v3, labels: {version: v3}}\n";
    let cluster = CLUSTER.replace(
        v3,
        &format!("{v3}  - {{name: v9, labels: {{version: v3}}}}\n"),
    );
    assert_ne!(cluster, CLUSTER, "the rule gained v9");
    let (later, errors) = run(
        &model(&[("cluster.yaml", &cluster), ("jason.yaml", &text)]),
        &out,
    );
    assert_eq!(errors, []);
    let routes = &later.config.listeners[&addr([10, 96, 0, 20], 9080)];
    assert_eq!(weights(&routes.http[1].action), [(Some("v9"), 100)]);
    let v9 = &later.config.clusters[&key("reviews", 9080, Some("v9"))];
    assert_eq!(endpoint_ips(v9), [addr([10, 244, 2, 3], 9080)]);
}

#[test]
fn a_subset_removed_from_the_rule_leaves_its_route_without_a_cluster() {
    let m = model(&[("cluster.yaml", CLUSTER), ("jason.yaml", JASON)]);
    let (good, _) = run(&m, &L7Compiled::default());
    assert!(good
        .config
        .clusters
        .contains_key(&key("reviews", 9080, Some("v2"))));
    // As Istio: the cluster goes with the subset; the route stays and answers 503 NC.
    let cluster = CLUSTER.replace("  - {name: v2, labels: {version: v2}}\n", "");
    assert_ne!(cluster, CLUSTER);
    let (out, errors) = run(
        &model(&[("cluster.yaml", &cluster), ("jason.yaml", JASON)]),
        &good,
    );
    assert_eq!(errors.len(), 1);
    assert!(errors[0].is_warning());
    let routes = &out.config.listeners[&addr([10, 96, 0, 20], 9080)];
    assert_eq!(weights(&routes.http[0].action), [(Some("v2"), 100)]);
    assert!(!out
        .config
        .clusters
        .contains_key(&key("reviews", 9080, Some("v2"))));
}

#[test]
fn destination_ports_must_exist_or_be_implied() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: two}\nspec:\n  clusterIP: 10.96.0.50\n  ports:\n  \
               - {name: http, port: 80}\n  - {name: http-admin, port: 9090}\n  - {name: tcp-raw, port: 7000}\n";
    let vs = |dest: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v}}\nspec:\n  hosts: [two]\n  \
                 http:\n  - match: [{{port: 9090}}]\n    route:\n    - destination: {dest}\n")
    };
    // The route only matches on port 9090; the unnamed destination port defaults to it.
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("svc.yaml", svc),
        ("vs.yaml", &vs("{host: reviews, port: {number: 9080}}")),
    ]);
    let ports: Vec<u16> = super::steered(&out).iter().map(SocketAddr::port).collect();
    assert_eq!(ports, [9090]);
    let out = ok(&[("svc.yaml", svc), ("vs.yaml", &vs("{host: two}"))]);
    let routes = &out.config.listeners[&addr([10, 96, 0, 50], 9090)];
    assert_eq!(weights(&routes.http[0].action), [(None, 100)]);
    let RouteAction::Route(w) = &routes.http[0].action else {
        panic!()
    };
    assert_eq!(w[0].cluster.port, 9090);

    let errors = |dest: &str| {
        let m = model(&[
            ("cluster.yaml", CLUSTER),
            ("svc.yaml", svc),
            ("vs.yaml", &vs(dest)),
        ]);
        run(&m, &L7Compiled::default())
            .1
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        errors("{host: reviews, port: {number: 80}}"),
        ["vs.yaml:1: VirtualService default/v: spec.http[0].route[0].destination.port.number: Service default/reviews \
          has no TCP port 80; the VirtualService keeps its previous routes"]
    );
    let m = model(&[
        ("svc.yaml", svc),
        (
            "vs.yaml",
            &vs("{host: two}").replace("[{port: 9090}]", "[{port: 7000}]"),
        ),
    ]);
    assert!(
        super::steered(&run(&m, &L7Compiled::default()).0).is_empty(),
        "tcp-* ports are not HTTP"
    );
}

#[test]
fn ambiguous_destination_port_is_an_error() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: two}\nspec:\n  clusterIP: 10.96.0.50\n  ports:\n  \
               - {name: http, port: 80}\n  - {name: http-admin, port: 9090}\n";
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [reviews]\n  \
              http:\n  - route:\n    - destination: {host: two}\n";
    let (_, errors) = run(
        &model(&[
            ("cluster.yaml", CLUSTER),
            ("svc.yaml", svc),
            ("vs.yaml", vs),
        ]),
        &L7Compiled::default(),
    );
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["vs.yaml:1: VirtualService default/v: spec.http[0].route[0].destination.port.number: Service default/two has \
          ports 80, 9090 and none is 9080, the port routed from: set port.number; the VirtualService keeps its previous routes"]
    );
}

#[test]
fn tcp_routes_are_kernel_weights_not_proxy_listeners() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  clusterIP: 10.96.0.60\n  selector: {app: db}\n  \
               ports:\n  - {name: tcp-pg, port: 5432}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db-a, labels: {app: db, role: a}}\n\
               status: {podIP: 10.244.9.1}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db-1\n  \
               labels: {kubernetes.io/service-name: db}\naddressType: IPv4\nports: [{name: tcp-pg, port: 5432}]\n\
               endpoints: [{addresses: [10.244.9.1]}, {addresses: [10.244.9.2]}]\n---\napiVersion: networking.istio.io/v1\n\
               kind: DestinationRule\nmetadata: {name: db}\nspec:\n  host: db\n  subsets: [{name: a, labels: {role: a}}, {name: all}]\n";
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db}\nspec:\n  hosts: [db]\n  tcp:\n  \
              - route:\n    - {destination: {host: db, subset: a}, weight: 90}\n    - {destination: {host: db, subset: all}, weight: 10}\n";
    let out = ok(&[("db.yaml", svc), ("vs.yaml", vs)]);
    assert!(out.config.listeners.is_empty());
    let fe = FrontendAddr {
        ip: Ipv4Addr::new(10, 96, 0, 60),
        port: 5432,
        protocol: Protocol::Tcp,
    };
    let w: Vec<(Option<&str>, u32)> = out.tcp_routes[&fe]
        .iter()
        .map(|(k, w)| (k.subset.as_deref(), *w))
        .collect();
    assert_eq!(w, [(Some("a"), 90), (Some("all"), 10)]);
    assert_eq!(
        endpoint_ips(&out.config.clusters[&key("db", 5432, Some("a"))]),
        [addr([10, 244, 9, 1], 5432)]
    );
    // A subset without labels selects every endpoint, labelled or not.
    assert_eq!(
        out.config.clusters[&key("db", 5432, Some("all"))]
            .endpoints
            .len(),
        2
    );
}

#[test]
fn the_services_own_namespace_rule_wins() {
    let other = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a-reviews, namespace: aaa}\nspec:\n  \
                 host: reviews.default.svc.cluster.local\n  subsets: [{name: v2, labels: {version: v1}}]\n";
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("other.yaml", other),
        ("jason.yaml", JASON),
    ]);
    // default/reviews (v2 = version v2) applies, not aaa/a-reviews (v2 = version v1).
    assert_eq!(
        endpoint_ips(&out.config.clusters[&key("reviews", 9080, Some("v2"))]),
        [addr([10, 244, 2, 2], 9080)]
    );
}

#[test]
fn first_virtual_service_owns_a_host() {
    let second = JASON
        .replace("name: reviews", "name: reviews-b")
        .replace("subset: v3", "subset: v1");
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("jason.yaml", JASON),
        ("b.yaml", &second),
    ]);
    let routes = &out.config.listeners[&addr([10, 96, 0, 20], 9080)];
    assert_eq!(weights(&routes.http[1].action), [(Some("v3"), 100)]);
}
