use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use meshpath_common::tc::{TC_ANY_NODE_IP, TC_FLAG_LOCAL, TC_FLAG_NODE_PORT, TC_FLAG_REMOTE};
use meshpath_common::{ipv4_be, port_be, ServiceKey, PROTO_TCP, PROTO_UDP};
use meshpath_model::*;

use super::*;
use crate::{compile, CompileOptions};

fn service(name: &str, ip: [u8; 4], node_port: Option<u16>, external: ExternalAccess) -> Service {
    let port = |protocol, node_port| ServicePort {
        name: Some(format!("p-{}", protocol_name(protocol))),
        port: 80,
        target_port: TargetPort::Number(8080),
        protocol,
        app_protocol: None,
        node_port,
    };
    Service {
        id: ObjectRef::new("default", name),
        cluster_ip: Some(Ipv4Addr::from(ip)),
        ports: vec![
            port(Protocol::Tcp, node_port),
            port(Protocol::Udp, node_port),
        ],
        selector: BTreeMap::new(),
        session_affinity: None,
        lb_policy: None,
        labels: BTreeMap::new(),
        origin: None,
        external,
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn slice(service: &str, ips: &[[u8; 4]]) -> EndpointSlice {
    let port = |protocol| EndpointPort {
        name: Some(format!("p-{}", protocol_name(protocol))),
        port: 8080,
        protocol,
    };
    EndpointSlice {
        id: ObjectRef::new("default", format!("{service}-abc")),
        service_name: service.into(),
        ports: vec![port(Protocol::Tcp), port(Protocol::Udp)],
        endpoints: ips
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![Ipv4Addr::from(*ip)],
                conditions: EndpointConditions::default(),
                pod_name: None,
                zone: None,
                node_name: None,
            })
            .collect(),
    }
}

fn model(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ClusterModel {
    ClusterModel {
        services: services
            .into_iter()
            .map(|s| (s.id.clone(), s.into()))
            .collect(),
        endpoint_slices: slices
            .into_iter()
            .map(|s| (s.id.clone(), s.into()))
            .collect(),
        ..ClusterModel::default()
    }
}

fn rendered(m: &ClusterModel, local: &LocalEndpoints) -> (TcContents, Vec<ExternalError>) {
    let (compiled, errors) = compile(m, &CompileOptions::default(), &Default::default());
    assert!(errors.is_empty(), "{errors:?}");
    render(m, &compiled, local)
}

fn key(ip: u32, port: u16, proto: u8, slot: u16) -> ServiceKey {
    ServiceKey::new(ip, port_be(port), proto, slot)
}

#[test]
fn node_port_and_external_addresses_get_frontends_over_the_cluster_ip_endpoints() {
    let external = ExternalAccess {
        external_ips: vec![Ipv4Addr::new(192, 0, 2, 7)],
        load_balancer_ips: vec![Ipv4Addr::new(198, 51, 100, 4)],
        traffic_policy: ExternalTrafficPolicy::Cluster,
    };
    let m = model(
        vec![service("web", [10, 96, 0, 10], Some(30080), external)],
        vec![slice("web", &[[10, 244, 0, 10], [10, 244, 0, 11]])],
    );
    let (tc, errors) = rendered(&m, &LocalEndpoints::All);
    assert!(errors.is_empty(), "{errors:?}");
    let ext = ipv4_be([192, 0, 2, 7]);
    let lb = ipv4_be([198, 51, 100, 4]);
    for proto in [PROTO_TCP, PROTO_UDP] {
        let np = tc.services[&key(TC_ANY_NODE_IP, 30080, proto, 0)];
        assert_eq!(np.count, 2);
        assert_eq!(np.flags, TC_FLAG_NODE_PORT);
        assert_eq!(tc.services[&key(ext, 80, proto, 0)].flags, 0);
        assert_eq!(tc.services[&key(lb, 80, proto, 0)].count, 2);
        let backends: BTreeSet<(u32, u16)> = (1..=2)
            .map(|s| tc.services[&key(ext, 80, proto, s)])
            .map(|b| (b.backend_ip_be, u16::from_be(b.backend_port_be)))
            .collect();
        assert_eq!(
            backends,
            BTreeSet::from([
                (ipv4_be([10, 244, 0, 10]), 8080),
                (ipv4_be([10, 244, 0, 11]), 8080)
            ])
        );
    }
    // 3 frontends × 2 protocols × (header + 2 slots).
    assert_eq!(tc.services.len(), 18);
    // The same service id as the ClusterIP frontend: one name and one set of stats.
    let (compiled, _) = compile(&m, &CompileOptions::default(), &Default::default());
    let cluster = &compiled.frontends[&crate::FrontendAddr {
        ip: Ipv4Addr::new(10, 96, 0, 10),
        port: 80,
        protocol: Protocol::Tcp,
    }];
    assert_eq!(
        tc.services[&key(TC_ANY_NODE_IP, 30080, PROTO_TCP, 0)].svc_id,
        cluster.svc_id
    );
}

#[test]
fn only_local_endpoints_are_rendered_and_local_policy_is_flagged() {
    let external = ExternalAccess {
        traffic_policy: ExternalTrafficPolicy::Local,
        ..Default::default()
    };
    let m = model(
        vec![service("web", [10, 96, 0, 10], Some(30080), external)],
        vec![slice("web", &[[10, 244, 1, 10], [10, 244, 2, 10]])],
    );
    let local = LocalEndpoints::Only(BTreeSet::from([Ipv4Addr::new(10, 244, 1, 10)]));
    let (tc, _) = rendered(&m, &local);
    let header = tc.services[&key(TC_ANY_NODE_IP, 30080, PROTO_TCP, 0)];
    assert_eq!(header.count, 1);
    assert_eq!(header.flags, TC_FLAG_NODE_PORT | TC_FLAG_LOCAL);
    let slot = tc.services[&key(TC_ANY_NODE_IP, 30080, PROTO_TCP, 1)];
    assert_eq!(slot.backend_ip_be, ipv4_be([10, 244, 1, 10]));
    // A node with none of the endpoints keeps the frontend with no slot: its packets are
    // refused and counted rather than passed to whatever listens on the node.
    let none = LocalEndpoints::Only(BTreeSet::new());
    let (tc, _) = rendered(&m, &none);
    assert_eq!(
        tc.services[&key(TC_ANY_NODE_IP, 30080, PROTO_TCP, 0)].count,
        0
    );
    assert!(!tc
        .services
        .contains_key(&key(TC_ANY_NODE_IP, 30080, PROTO_TCP, 1)));
}

#[test]
fn cluster_policy_renders_every_endpoint_and_flags_the_remote_ones() {
    let m = model(
        vec![service(
            "web",
            [10, 96, 0, 10],
            Some(30080),
            Default::default(),
        )],
        vec![slice("web", &[[10, 244, 1, 10], [10, 244, 2, 10]])],
    );
    let local = LocalEndpoints::Only(BTreeSet::from([Ipv4Addr::new(10, 244, 1, 10)]));
    let (tc, _) = rendered(&m, &local);
    let header = tc.services[&key(TC_ANY_NODE_IP, 30080, PROTO_TCP, 0)];
    assert_eq!(header.count, 2);
    assert_eq!(header.flags, TC_FLAG_NODE_PORT);
    let flags: BTreeMap<u32, u8> = (1..=2)
        .map(|i| tc.services[&key(TC_ANY_NODE_IP, 30080, PROTO_TCP, i)])
        .map(|s| (s.backend_ip_be, s.flags))
        .collect();
    assert_eq!(flags[&ipv4_be([10, 244, 1, 10])], TC_FLAG_NODE_PORT);
    assert_eq!(
        flags[&ipv4_be([10, 244, 2, 10])],
        TC_FLAG_NODE_PORT | TC_FLAG_REMOTE
    );
}

#[test]
fn an_endpoint_naming_the_node_is_local_without_a_pod_object() {
    let mut s = slice("web", &[[10, 244, 1, 10], [10, 244, 2, 10]]);
    s.endpoints[0].node_name = Some("n1".into());
    s.endpoints[1].node_name = Some("n2".into());
    let m = model(Vec::new(), vec![s]);
    assert_eq!(
        LocalEndpoints::of_node(&m, "n1"),
        LocalEndpoints::Only(BTreeSet::from([Ipv4Addr::new(10, 244, 1, 10)]))
    );
}

#[test]
fn local_endpoints_of_a_node_are_its_pods_ips() {
    let mut m = ClusterModel::default();
    for (name, node, ip) in [("a", "n1", [10, 0, 0, 1]), ("b", "n2", [10, 0, 0, 2])] {
        let pod = Pod {
            id: ObjectRef::new("default", name),
            labels: BTreeMap::new(),
            ip: Some(Ipv4Addr::from(ip)),
            container_ports: Vec::new(),
            placement: PodPlacement {
                node_name: Some(node.into()),
                ..Default::default()
            },
            workload: name.into(),
            trace_sampling_hundredths: None,
            socket_redirect: None,
        };
        m.pods.insert(pod.id.clone(), pod);
    }
    assert_eq!(
        LocalEndpoints::of_node(&m, "n1"),
        LocalEndpoints::Only(BTreeSet::from([Ipv4Addr::new(10, 0, 0, 1)]))
    );
}

#[test]
fn a_claimed_node_port_stays_with_its_first_service_and_the_other_is_reported() {
    let m = model(
        vec![
            service("a", [10, 96, 0, 10], Some(30080), Default::default()),
            service("b", [10, 96, 0, 11], Some(30080), Default::default()),
        ],
        vec![
            slice("a", &[[10, 244, 0, 10]]),
            slice("b", &[[10, 244, 0, 20]]),
        ],
    );
    let (tc, errors) = rendered(&m, &LocalEndpoints::All);
    assert_eq!(errors.len(), 2, "{errors:?}"); // TCP and UDP
    assert!(errors[0]
        .to_string()
        .contains("Service default/b: nodePort 30080/TCP"));
    let slot = tc.services[&key(TC_ANY_NODE_IP, 30080, PROTO_TCP, 1)];
    assert_eq!(slot.backend_ip_be, ipv4_be([10, 244, 0, 10]));
}

#[test]
fn a_service_without_node_port_or_external_address_renders_nothing() {
    let m = model(
        vec![service("web", [10, 96, 0, 10], None, Default::default())],
        vec![slice("web", &[[10, 244, 0, 10]])],
    );
    let (tc, errors) = rendered(&m, &LocalEndpoints::All);
    assert!(tc.services.is_empty() && errors.is_empty());
}
