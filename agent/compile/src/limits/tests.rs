//! Route-destination connection limits: which counter each weighted slot's connects count against.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use meshpath_common::{ipv4_be, port_be, SockLimit, PROTO_TCP, SVC_FLAG_ROUTE_LIMITS};

use meshpath_model::ClusterModel;
use meshpath_source::{parse_file, ParsedObject};

use super::*;
use crate::l7::{compile_l7, kernel_connection_limits};
use crate::{compile, CompileOptions};

/// db (10.96.0.60:5432) with pods v1 (10.244.9.1) and v2 (10.244.9.2); cache (10.96.0.61:6379)
/// with one pod. `dr` and `vs` are appended.
fn model(dr: &str, vs: &str) -> ClusterModel {
    let base = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  clusterIP: 10.96.0.60\n  selector: {app: db}\n  \
                ports:\n  - {name: tcp-pg, port: 5432}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: db-1, labels: {app: db, version: v1}}\nstatus: {podIP: 10.244.9.1}\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata: {name: db-2, labels: {app: db, version: v2}}\nstatus: {podIP: 10.244.9.2}\n---\n\
                apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db-1\n  \
                labels: {kubernetes.io/service-name: db}\naddressType: IPv4\nports: [{name: tcp-pg, port: 5432}]\n\
                endpoints: [{addresses: [10.244.9.1]}, {addresses: [10.244.9.2]}]\n---\n\
                apiVersion: v1\nkind: Service\nmetadata: {name: cache}\nspec:\n  clusterIP: 10.96.0.61\n  selector: {app: cache}\n  \
                ports:\n  - {name: tcp-redis, port: 6379}\n---\n\
                apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: cache-1\n  \
                labels: {kubernetes.io/service-name: cache}\naddressType: IPv4\nports: [{name: tcp-redis, port: 6379}]\n\
                endpoints: [{addresses: [10.244.9.3]}]\n";
    let mut m = ClusterModel::default();
    for (name, text) in [("base.yaml", base), ("dr.yaml", dr), ("vs.yaml", vs)] {
        for object in parse_file(Path::new(name), text).expect("parses") {
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

const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db}\nspec:\n  host: db\n  \
                  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}\n  subsets:\n  \
                  - {name: v1, labels: {version: v1}, trafficPolicy: {connectionPool: {tcp: {maxConnections: 2}}}}\n  \
                  - {name: v2, labels: {version: v2}}\n";

fn vs(routes: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: db}}\nspec:\n  hosts: [db]\n  tcp:\n  - route:\n{routes}")
}

fn db() -> FrontendAddr {
    FrontendAddr {
        ip: Ipv4Addr::new(10, 96, 0, 60),
        port: 5432,
        protocol: Protocol::Tcp,
    }
}

/// What `Reconciler::reconcile` does, without ejections or steering.
fn contents(m: &ClusterModel, previous: &RouteLimits) -> (MapContents, RouteLimits) {
    let (mut compiled, errors) = compile(m, &CompileOptions::default(), &Compiled::default());
    assert_eq!(errors, []);
    let limits = kernel_connection_limits(m, &compiled);
    for fe in compiled.frontends.values_mut() {
        fe.max_connections = limits.get(&fe.service).copied();
    }
    let (l7, errors) = compile_l7(m, &compiled, &Default::default());
    assert_eq!(errors, []);
    let (route, errors) = route_limits(&l7, &compiled, previous);
    assert_eq!(errors, []);
    let weighted: BTreeMap<_, _> = l7
        .tcp_routes
        .iter()
        .map(|(addr, routes)| {
            let w = routes
                .iter()
                .map(|(k, w)| {
                    let eps = l7.config.clusters[k]
                        .endpoints
                        .iter()
                        .map(|e| match e.addr {
                            SocketAddr::V4(a) => BackendAddr {
                                ip: *a.ip(),
                                port: a.port(),
                                protocol: Protocol::Tcp,
                            },
                            SocketAddr::V6(_) => unreachable!(),
                        })
                        .collect();
                    (eps, *w)
                })
                .collect();
            (*addr, w)
        })
        .collect();
    let mut out =
        compiled.map_contents_steered(&BTreeMap::new(), &weighted, &crate::steer::FailClosed::None);
    route.render(&mut out, &compiled, &weighted);
    (out, route)
}

fn base(fe: FrontendAddr) -> ServiceKey {
    ServiceKey::new(ipv4_be(fe.ip.octets()), port_be(fe.port), PROTO_TCP, 0)
}

#[test]
fn each_subset_slot_counts_against_its_destinations_merged_limit() {
    let routes = "    - {destination: {host: db, subset: v1}, weight: 30}\n    \
                  - {destination: {host: db, subset: v2}, weight: 70}\n";
    let (c, route) = contents(&model(DR, &vs(routes)), &RouteLimits::default());
    let v1 = &route.groups[&ClusterKey {
        service: meshpath_model::ObjectRef::new("default", "db"),
        port: 5432,
        subset: Some("v1".into()),
        view: None,
    }];
    let v2 = &route.groups[&ClusterKey {
        service: meshpath_model::ObjectRef::new("default", "db"),
        port: 5432,
        subset: Some("v2".into()),
        view: None,
    }];
    // v1's own limit; v2 inherits the rule's top-level one.
    assert_eq!((v1.max, v2.max), (2, 7));
    assert_eq!(
        c.group_limits,
        [(v1.id, 2), (v2.id, 7)].into_iter().collect()
    );
    assert_eq!(
        c.group_names[&v1.id].as_str(),
        "outbound|5432|v1|db.default.svc.cluster.local"
    );
    let key = base(db());
    let per_target = |t: SockLimit| {
        (1..=100)
            .filter(|s| c.slot_limits.get(&key.with_slot(*s)) == Some(&t))
            .count()
    };
    assert_eq!(per_target(SockLimit::group(v1.id)), 30);
    assert_eq!(per_target(SockLimit::group(v2.id)), 70);
    // Every slot of v1 goes to v1's pod, and the frontend is flagged, header and slots.
    let v1_backend = c.services[&key.with_slot(1)].backend_id;
    for s in 1..=100 {
        let v = c.services[&key.with_slot(s)];
        assert_ne!(v.flags & SVC_FLAG_ROUTE_LIMITS, 0);
        assert_eq!(
            v.backend_id == v1_backend,
            c.slot_limits[&key.with_slot(s)] == SockLimit::group(v1.id),
            "slot {s}"
        );
    }
    assert_ne!(c.services[&key].flags & SVC_FLAG_ROUTE_LIMITS, 0);
}

#[test]
fn a_destination_without_subset_shares_the_service_counter_and_unlimited_ones_get_none() {
    let routes = "    - {destination: {host: db}, weight: 50}\n    \
                  - {destination: {host: cache, port: {number: 6379}}, weight: 50}\n";
    let (c, route) = contents(&model(DR, &vs(routes)), &RouteLimits::default());
    assert!(route.groups.is_empty());
    assert!(c.group_limits.is_empty());
    let key = base(db());
    let db_id = c.services[&key].svc_id;
    // db's default cluster is its own service-wide counter (limit 7); cache has no limit.
    assert_eq!(c.conn_limits.get(&db_id), Some(&7));
    let own = (1..=100)
        .filter(|s| c.slot_limits.get(&key.with_slot(*s)) == Some(&SockLimit::service(db_id)))
        .count();
    assert_eq!(own, 50);
    assert_eq!(c.slot_limits.len(), 50);
}

#[test]
fn plain_frontends_are_not_flagged_and_group_ids_are_stable() {
    let routes = "    - {destination: {host: db, subset: v1}, weight: 100}\n";
    let m = model(DR, &vs(routes));
    let (first, route) = contents(&m, &RouteLimits::default());
    let cache = base(FrontendAddr {
        ip: Ipv4Addr::new(10, 96, 0, 61),
        port: 6379,
        protocol: Protocol::Tcp,
    });
    assert_eq!(first.services[&cache].flags & SVC_FLAG_ROUTE_LIMITS, 0);
    // Another destination appears first in the routes: v1 keeps its id.
    let routes = "    - {destination: {host: db, subset: v2}, weight: 50}\n    \
                  - {destination: {host: db, subset: v1}, weight: 50}\n";
    let (_, again) = contents(&model(DR, &vs(routes)), &route);
    let id = |r: &RouteLimits, s: &str| {
        r.groups
            .iter()
            .find(|(k, _)| k.subset.as_deref() == Some(s))
            .map(|(_, g)| g.id)
    };
    assert_eq!(id(&again, "v1"), id(&route, "v1"));
    assert_ne!(id(&again, "v2"), id(&again, "v1"));
}
