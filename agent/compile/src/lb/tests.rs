use std::net::Ipv4Addr;
use std::path::Path;

use meshpath_source::{parse_file, ParsedObject};

use super::*;
use crate::{compile, CompileOptions};

/// A Service `web` (10.96.0.50) with ports `http` 80 and `tcp-db` 5432, its EndpointSlice with
/// `endpoints` pods, and `rule` as its DestinationRule's trafficPolicy (YAML, indented 2).
fn model(
    rule: Option<&str>,
    endpoints: &[&str],
    port_name: &str,
    app_protocol: &str,
) -> ClusterModel {
    let eps: String = endpoints
        .iter()
        .map(|ip| format!("- addresses: [{ip}]\n"))
        .collect();
    let eps = if eps.is_empty() {
        "[]\n".to_string()
    } else {
        format!("\n{eps}")
    };
    let mut text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  clusterIP: 10.96.0.50\n  ports:\n  - {{name: {port_name}, port: 80{app_protocol}}}\n  - {{name: tcp-db, port: 5432}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports:\n- {{name: {port_name}, port: 8080}}\n- {{name: tcp-db, port: 5432}}\nendpoints: {eps}"
    );
    if let Some(policy) = rule {
        text.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {{name: web}}\nspec:\n  host: web\n  trafficPolicy:\n{policy}"
        ));
    }
    let mut m = ClusterModel::default();
    for object in parse_file(Path::new("web.yaml"), &text).expect("valid manifests") {
        match object {
            ParsedObject::Service(s) => drop(m.services.insert(s.id.clone(), s.into())),
            ParsedObject::EndpointSlice(s) => {
                drop(m.endpoint_slices.insert(s.id.clone(), s.into()))
            }
            ParsedObject::DestinationRule(d) => drop(m.destination_rules.insert(d.id.clone(), *d)),
            _ => {}
        }
    }
    m
}

fn addr(port: u16) -> FrontendAddr {
    FrontendAddr {
        ip: Ipv4Addr::new(10, 96, 0, 50),
        port,
        protocol: Protocol::Tcp,
    }
}

/// compile + the rules, as the agent's reconcile runs them.
fn compiled(m: &ClusterModel, opts: &CompileOptions) -> Compiled {
    let (mut c, errors) = compile(m, opts, &Compiled::default());
    assert_eq!(errors, []);
    let rules = rule_policies(m, &c);
    apply_rules(&mut c, &rules);
    c
}

const TWO: &[&str] = &["10.244.0.1", "10.244.0.2"];

#[test]
fn simple_round_robin_and_random_go_to_the_kernel() {
    let rr = model(
        Some("    loadBalancer: {simple: ROUND_ROBIN}\n"),
        TWO,
        "http",
        "",
    );
    let c = compiled(&rr, &CompileOptions::default());
    for port in [80, 5432] {
        let fe = &c.frontends[&addr(port)];
        assert_eq!(fe.lb_policy, LbPolicy::RoundRobin, "port {port}");
        assert_eq!(fe.lb_origin, LbOrigin::Rule(RuleLb::RoundRobin));
    }
    let header = c.map_contents().services[&meshpath_common::ServiceKey::new(
        meshpath_common::ipv4_be([10, 96, 0, 50]),
        meshpath_common::port_be(80),
        meshpath_common::PROTO_TCP,
        0,
    )];
    assert_ne!(header.flags & meshpath_common::SVC_FLAG_ROUND_ROBIN, 0);
    assert_eq!(header.policy, code::LB_ROUND_ROBIN | code::PROXY_NONE);

    // RANDOM wins over an agent default of round robin.
    let random = model(
        Some("    loadBalancer: {simple: RANDOM}\n"),
        TWO,
        "http",
        "",
    );
    let opts = CompileOptions {
        default_lb_policy: LbPolicy::RoundRobin,
        ..CompileOptions::default()
    };
    let c = compiled(&random, &opts);
    assert_eq!(c.frontends[&addr(80)].lb_policy, LbPolicy::Random);
    // No policy written: the default, and status says so.
    let c = compiled(&model(None, TWO, "http", ""), &opts);
    assert_eq!(c.frontends[&addr(80)].lb_policy, LbPolicy::RoundRobin);
    assert_eq!(c.frontends[&addr(80)].lb_origin, LbOrigin::Default);
}

#[test]
fn least_request_and_consistent_hash_steer_http_ports_to_the_proxy() {
    for policy in [
        "    loadBalancer: {simple: LEAST_REQUEST}\n",
        "    loadBalancer: {simple: LEAST_CONN}\n",
        "    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n",
    ] {
        let m = model(Some(policy), TWO, "http", "");
        let mut c = compiled(&m, &CompileOptions::default());
        let (l7, errors) = crate::l7::compile_l7(&m, &c, &Default::default());
        assert_eq!(errors, []);
        let wanted = steer_reasons(&l7.config);
        assert_eq!(wanted.get(&addr(80)), Some(&ProxyPart::Policy), "{policy}");
        // The TCP port cannot go to the HTTP proxy: marked as not enforced there.
        assert!(!wanted.contains_key(&addr(5432)));
        mark_proxy(&mut c, &wanted, &[addr(80)].into());
        assert_eq!(c.frontends[&addr(80)].proxy, ProxyPart::Policy);
        assert_eq!(c.frontends[&addr(5432)].proxy, ProxyPart::NotHttp);
        // Not steered (no proxy): the kernel balances, and says it lacked the proxy.
        mark_proxy(&mut c, &wanted, &BTreeSet::new());
        assert_eq!(c.frontends[&addr(80)].proxy, ProxyPart::Unavailable);
    }
}

#[test]
fn passthrough_keeps_the_services_own_policy_in_the_kernel() {
    let m = model(
        Some("    loadBalancer: {simple: PASSTHROUGH}\n"),
        TWO,
        "http",
        "",
    );
    let opts = CompileOptions {
        default_lb_policy: LbPolicy::RoundRobin,
        ..CompileOptions::default()
    };
    let mut c = compiled(&m, &opts);
    let (l7, _) = crate::l7::compile_l7(&m, &c, &Default::default());
    let wanted = steer_reasons(&l7.config);
    assert!(wanted.is_empty(), "{wanted:?}");
    mark_proxy(&mut c, &wanted, &BTreeSet::new());
    let fe = &c.frontends[&addr(80)];
    assert_eq!(fe.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(policy_code(fe), code::LB_PASSTHROUGH | code::PROXY_NONE);
}

#[test]
fn only_declared_http_ports_without_endpoints_answer_503() {
    let none = model(None, &[], "http", "");
    let c = compiled(&none, &CompileOptions::default());
    // Port 80 is `http`; `tcp-db` is not HTTP.
    assert_eq!(http_without_endpoints(&none, &c), [addr(80)].into());
    let suffixed = model(None, &[], "http-web", "");
    let c = compiled(&suffixed, &CompileOptions::default());
    assert_eq!(http_without_endpoints(&suffixed, &c), [addr(80)].into());
    let app = model(None, &[], "web", ", appProtocol: HTTP");
    let c = compiled(&app, &CompileOptions::default());
    assert_eq!(http_without_endpoints(&app, &c), [addr(80)].into());
    // A name that only may carry HTTP is not declared HTTP.
    let undeclared = model(None, &[], "web", "");
    let c = compiled(&undeclared, &CompileOptions::default());
    assert!(http_without_endpoints(&undeclared, &c).is_empty());
    // Endpoints back: nothing to answer.
    let back = model(None, TWO, "http", "");
    let c = compiled(&back, &CompileOptions::default());
    assert!(http_without_endpoints(&back, &c).is_empty());
}
