//! The seed's Istio objects (verbatim, in `agent/source/src/istio/testdata`) compiled against a small cluster.

mod export;
mod locality;
mod port_level;
mod resolution;
mod rule_export;
mod wildcard;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use meshpath_model::l7::{Cluster, HashAlgorithm, HashKey, LoadBalancer, RouteAction, StringMatch};
use meshpath_model::Protocol;
use meshpath_source::{parse_file, ParsedObject};

use super::*;
use crate::{compile, CompileOptions};

pub(super) const CLUSTER: &str = include_str!("../../../source/src/istio/testdata/cluster.yaml");
pub(super) const WEIGHTED: &str = include_str!("../../../source/src/istio/testdata/weighted.yaml");
pub(super) const JASON: &str = include_str!("../../../source/src/istio/testdata/jason.yaml");
const LOAD_BALANCING: &str = include_str!("../../../source/src/istio/testdata/load_balancing.yaml");
const CIRCUIT_BREAKING: &str =
    include_str!("../../../source/src/istio/testdata/circuit_breaking.yaml");
const FAULT_ABORT: &str = include_str!("../../../source/src/istio/testdata/fault_abort.yaml");
const FAULT_DELAY: &str = include_str!("../../../source/src/istio/testdata/fault_delay.yaml");
const MIRROR: &str = include_str!("../../../source/src/istio/testdata/mirror.yaml");

/// The model of `files` (name, text), each parsed as the manifests source does.
pub(super) fn model(files: &[(&str, &str)]) -> ClusterModel {
    let mut m = ClusterModel::default();
    for (name, text) in files {
        let objects = parse_file(Path::new(name), text).unwrap_or_else(|e| {
            panic!(
                "{name}: {:#?}",
                e.iter().map(ToString::to_string).collect::<Vec<_>>()
            )
        });
        for object in objects {
            match object {
                ParsedObject::Service(s) => drop(m.services.insert(s.id.clone(), s.into())),
                ParsedObject::ExternalName(id, n) => drop(m.external_names.insert(id, n)),
                ParsedObject::EndpointSlice(s) => {
                    drop(m.endpoint_slices.insert(s.id.clone(), s.into()))
                }
                ParsedObject::Pod(p) => drop(m.pods.insert(p.id.clone(), p)),
                ParsedObject::Namespace(n) => drop(m.namespaces.insert(n.id.clone(), n)),
                ParsedObject::Node(n) => drop(m.nodes.insert(n.id.clone(), n)),
                ParsedObject::VirtualService(v) => drop(m.virtual_services.insert(v.id.clone(), v)),
                ParsedObject::DestinationRule(d) => {
                    drop(m.destination_rules.insert(d.id.clone(), *d))
                }
            }
        }
    }
    m
}

pub(super) fn run(model: &ClusterModel, previous: &L7Compiled) -> (L7Compiled, Vec<L7Error>) {
    let (compiled, errors) = compile(model, &CompileOptions::default(), &Compiled::default());
    assert_eq!(errors, []);
    compile_l7(model, &compiled, previous)
}

pub(super) fn ok(files: &[(&str, &str)]) -> L7Compiled {
    let (out, errors) = run(&model(files), &L7Compiled::default());
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        Vec::<String>::new()
    );
    out
}

pub(super) fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(ip), port))
}

pub(super) fn key(name: &str, port: u16, subset: Option<&str>) -> ClusterKey {
    ClusterKey {
        service: ObjectRef::new("default", name),
        port,
        subset: subset.map(Into::into),
        view: None,
    }
}

pub(super) fn weights(action: &RouteAction) -> Vec<(Option<&str>, u32)> {
    match action {
        RouteAction::Route(w) => w
            .iter()
            .map(|w| (w.cluster.subset.as_deref(), w.weight))
            .collect(),
        other => panic!("not a route: {other:?}"),
    }
}

pub(super) fn endpoint_ips(cluster: &Cluster) -> Vec<SocketAddr> {
    cluster.endpoints.iter().map(|e| e.addr).collect()
}

pub(super) const SPRINGBOOT: [u8; 4] = [10, 96, 0, 10];

#[test]
fn seed_weighted_20_80_with_subset_endpoints() {
    let out = ok(&[("cluster.yaml", CLUSTER), ("weighted.yaml", WEIGHTED)]);
    let routes = &out.config.listeners[&addr(SPRINGBOOT, 8080)];
    assert_eq!(
        (routes.service.to_string().as_str(), routes.port),
        ("default/springboot-app-svc", 8080)
    );
    assert_eq!(
        routes.default_cluster,
        key("springboot-app-svc", 8080, None)
    );
    assert_eq!(
        weights(&routes.http[0].action),
        [(Some("v1"), 20), (Some("v2"), 80)]
    );
    // A weighted split's spans are named after the VirtualService (Istio's route decorator).
    assert_eq!(
        routes.http[0].virtual_service.as_deref(),
        Some("springboot-app-svc")
    );
    // Subsets select by the labels of the Pods the EndpointSlice names.
    let clusters = &out.config.clusters;
    assert_eq!(
        endpoint_ips(&clusters[&key("springboot-app-svc", 8080, Some("v1"))]),
        [addr([10, 244, 1, 1], 8080)]
    );
    assert_eq!(
        endpoint_ips(&clusters[&key("springboot-app-svc", 8080, Some("v2"))]),
        [addr([10, 244, 1, 2], 8080)]
    );
    assert_eq!(
        clusters[&key("springboot-app-svc", 8080, Some("v2"))].endpoints[0].labels["version"],
        "v2"
    );
    assert_eq!(
        clusters[&key("springboot-app-svc", 8080, None)]
            .endpoints
            .len(),
        2
    );
    let steered: Vec<FrontendAddr> = needs_proxy(&out.config).into_iter().collect();
    assert_eq!(
        steered,
        [FrontendAddr {
            ip: Ipv4Addr::from(SPRINGBOOT),
            port: 8080,
            protocol: Protocol::Tcp
        }]
    );
    assert!(out.tcp_routes.is_empty());
}

#[test]
fn seed_jason_header_match() {
    let out = ok(&[("cluster.yaml", CLUSTER), ("jason.yaml", JASON)]);
    let routes = &out.config.listeners[&addr([10, 96, 0, 20], 9080)];
    let [jason, rest] = routes.http.as_slice() else {
        panic!("two routes")
    };
    let (name, Some(StringMatch::Exact(value))) = &jason.matches[0].headers[0] else {
        panic!("exact header")
    };
    assert_eq!((name.as_str(), value.as_str()), ("end-user", "jason"));
    assert_eq!(weights(&jason.action), [(Some("v2"), 100)]);
    assert!(rest.matches.is_empty());
    assert_eq!(weights(&rest.action), [(Some("v3"), 100)]);
    // reviews' slice names no Pods: labels come from the Pod with the endpoint's IP.
    let v3 = &out.config.clusters[&key("reviews", 9080, Some("v3"))];
    assert_eq!(endpoint_ips(v3), [addr([10, 244, 2, 3], 9080)]);
}

#[test]
fn seed_faults_abort_and_delay() {
    let out = ok(&[("cluster.yaml", CLUSTER), ("fault_abort.yaml", FAULT_ABORT)]);
    let http = &out.config.listeners[&addr(SPRINGBOOT, 8080)].http;
    let fault = http[0].fault.as_ref().expect("fault");
    assert_eq!(
        (fault.abort, fault.delay),
        (Some((meshpath_model::l7::Abort::Http(500), 100.0)), None)
    );
    assert_eq!(http[0].matches[0].headers[0].0, "end-user");
    assert_eq!(weights(&http[1].action), [(Some("v2"), 100)]);

    let out = ok(&[("cluster.yaml", CLUSTER), ("fault_delay.yaml", FAULT_DELAY)]);
    let http = &out.config.listeners[&addr(SPRINGBOOT, 8080)].http;
    assert_eq!(
        http[0].fault.as_ref().and_then(|f| f.delay),
        Some((Duration::from_secs(7), 100.0))
    );
    assert!(http[0].matches.is_empty());
}

#[test]
fn seed_mirror_10_percent() {
    let out = ok(&[("cluster.yaml", CLUSTER), ("mirror.yaml", MIRROR)]);
    let route = &out.config.listeners[&addr(SPRINGBOOT, 8080)].http[0];
    assert_eq!(weights(&route.action), [(Some("v1"), 100)]);
    let mirror = route.mirrors.first().expect("mirror");
    assert_eq!(
        (&mirror.cluster, mirror.percentage),
        (&key("springboot-app-svc", 8080, Some("v2")), 10.0)
    );
    assert!(out.config.clusters.contains_key(&mirror.cluster));
}

#[test]
fn seed_load_balancing_subsets_merge_their_policy_over_the_rule() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: my-svc}\nspec:\n  hosts: [my-svc]\n  \
              http:\n  - route:\n    - {destination: {host: my-svc, subset: v1}, weight: 50}\n    \
              - {destination: {host: my-svc, subset: v2}, weight: 30}\n    - {destination: {host: my-svc, subset: v3}, weight: 20}\n";
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("lb.yaml", LOAD_BALANCING),
        ("vs.yaml", vs),
    ]);
    let cluster = |subset| &out.config.clusters[&key("my-svc", 80, subset)];
    assert!(matches!(
        cluster(None).policy.load_balancer,
        LoadBalancer::Random
    ));
    assert!(matches!(
        cluster(Some("v1")).policy.load_balancer,
        LoadBalancer::Random
    ));
    assert!(matches!(
        cluster(Some("v2")).policy.load_balancer,
        LoadBalancer::RoundRobin
    ));
    let LoadBalancer::ConsistentHash {
        key: HashKey::Cookie { name, path, ttl },
        algorithm,
    } = &cluster(Some("v3")).policy.load_balancer
    else {
        panic!("cookie hash")
    };
    assert_eq!(
        (name.as_str(), path, ttl),
        ("user", &None, &Some(Duration::ZERO))
    );
    assert!(matches!(
        algorithm,
        HashAlgorithm::RingHash {
            minimum_ring_size: 1024
        }
    ));
    // Endpoints are the backends' target port (8000), not the service port.
    assert_eq!(
        endpoint_ips(cluster(Some("v3"))),
        [addr([10, 244, 3, 3], 8000)]
    );

    // RANDOM alone is the kernel's own balancing: the rule by itself steers nothing.
    let out = ok(&[("cluster.yaml", CLUSTER), ("lb.yaml", LOAD_BALANCING)]);
    assert!(steered(&out).is_empty());
}

#[test]
fn circuit_breaking_rule_steers_its_service_without_routes() {
    let fixed = CIRCUIT_BREAKING.replace("      interval: 5m", "      # interval: 5m");
    let out = ok(&[("cluster.yaml", CLUSTER), ("cb.yaml", &fixed)]);
    let routes = &out.config.listeners[&addr([10, 96, 0, 40], 8080)];
    assert!(routes.http.is_empty());
    let policy = &out.config.clusters[&routes.default_cluster].policy;
    let outlier = policy
        .outlier_detection
        .as_ref()
        .expect("outlier detection");
    assert_eq!(
        (outlier.consecutive_5xx_errors, outlier.interval),
        (Some(1), Duration::from_secs(1))
    );
    assert_eq!(policy.connection_pool.http1_max_pending_requests, Some(1));
}

/// The listeners the kernel steers to the proxy (the table also holds plain forwarding entries).
pub(super) fn steered(out: &L7Compiled) -> Vec<std::net::SocketAddr> {
    super::needs_proxy(&out.config)
        .iter()
        .map(|f| std::net::SocketAddr::new(f.ip.into(), f.port))
        .collect()
}
