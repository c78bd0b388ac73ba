use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use meshpath_common::{
    ipv4_be, port_be, ServiceKey, PROTO_TCP, SVC_FLAG_AFFINITY, SVC_FLAG_ROUND_ROBIN,
};

use meshpath_model::*;

use super::*;

fn svc(name: &str, ip: Option<[u8; 4]>, port: u16, target: TargetPort) -> Service {
    Service {
        id: ObjectRef::new("default", name),
        cluster_ip: ip.map(Ipv4Addr::from),
        ports: vec![ServicePort {
            name: Some("http".into()),
            port,
            target_port: target,
            protocol: Protocol::Tcp,
            app_protocol: None,
            node_port: None,
        }],
        selector: BTreeMap::new(),
        session_affinity: None,
        lb_policy: None,
        labels: BTreeMap::new(),
        origin: Some("manifests/web.yaml".into()),
        external: Default::default(),
    }
}

fn ep(ip: [u8; 4], ready: bool, terminating: bool) -> Endpoint {
    Endpoint {
        addresses: vec![Ipv4Addr::from(ip)],
        conditions: EndpointConditions {
            ready,
            serving: ready || terminating,
            terminating,
        },
        pod_name: None,
        zone: None,
        node_name: None,
    }
}

fn slice(service: &str, port_name: &str, port: u16, endpoints: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        id: ObjectRef::new("default", format!("{service}-abc")),
        service_name: service.into(),
        ports: vec![EndpointPort {
            name: Some(port_name.into()),
            port,
            protocol: Protocol::Tcp,
        }],
        endpoints,
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
        pods: BTreeMap::new(),
        ..ClusterModel::default()
    }
}

fn frontend(c: &Compiled, ip: [u8; 4], port: u16) -> &Frontend {
    &c.frontends[&FrontendAddr {
        ip: Ipv4Addr::from(ip),
        port,
        protocol: Protocol::Tcp,
    }]
}

fn ips(fe: &Frontend) -> Vec<(Ipv4Addr, u16)> {
    fe.backends.iter().map(|b| (b.ip, b.port)).collect()
}

#[test]
fn ready_endpoints_become_slots_behind_a_header() {
    let m = model(
        vec![svc(
            "web",
            Some([10, 96, 0, 10]),
            80,
            TargetPort::Number(8080),
        )],
        vec![slice(
            "web",
            "http",
            8080,
            vec![
                ep([10, 244, 0, 11], true, false),
                ep([10, 244, 0, 12], true, false),
                ep([10, 244, 0, 13], false, false),
            ],
        )],
    );
    let (c, errors) = compile(&m, &CompileOptions::default(), &Compiled::default());
    assert!(errors.is_empty(), "{errors:?}");
    let fe = frontend(&c, [10, 96, 0, 10], 80);
    assert_eq!(
        ips(fe),
        vec![
            (Ipv4Addr::new(10, 244, 0, 11), 8080),
            (Ipv4Addr::new(10, 244, 0, 12), 8080)
        ]
    );

    let maps = c.map_contents();
    let key = ServiceKey::new(ipv4_be([10, 96, 0, 10]), port_be(80), PROTO_TCP, 0);
    let header = maps.services[&key];
    assert_eq!(
        (header.count, header.flags, header.svc_id),
        (2, 0, fe.svc_id)
    );
    for slot in 1..=2 {
        let v = maps.services[&key.with_slot(slot)];
        assert_eq!(maps.backends[&v.backend_id].port_be, port_be(8080));
    }
    assert_eq!(maps.services.len(), 3);
    assert_eq!(maps.backends.len(), 2);
}

#[test]
fn named_target_port_resolves_through_the_slice_port_named_after_the_service_port() {
    let m = model(
        vec![svc(
            "web",
            Some([10, 96, 0, 10]),
            80,
            TargetPort::Name("web-port".into()),
        )],
        vec![slice(
            "web",
            "http",
            9090,
            vec![ep([10, 244, 0, 11], true, false)],
        )],
    );
    let (c, errors) = compile(&m, &CompileOptions::default(), &Compiled::default());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        ips(frontend(&c, [10, 96, 0, 10], 80)),
        vec![(Ipv4Addr::new(10, 244, 0, 11), 9090)]
    );
}

#[test]
fn unresolvable_named_target_port_is_an_error_and_keeps_the_previous_backends() {
    let good = model(
        vec![svc(
            "web",
            Some([10, 96, 0, 10]),
            80,
            TargetPort::Name("web-port".into()),
        )],
        vec![slice(
            "web",
            "http",
            9090,
            vec![ep([10, 244, 0, 11], true, false)],
        )],
    );
    let (before, _) = compile(&good, &CompileOptions::default(), &Compiled::default());
    let bad = model(
        vec![svc(
            "web",
            Some([10, 96, 0, 10]),
            80,
            TargetPort::Name("web-port".into()),
        )],
        vec![slice(
            "web",
            "metrics",
            9100,
            vec![ep([10, 244, 0, 12], true, false)],
        )],
    );
    let (after, errors) = compile(&bad, &CompileOptions::default(), &before);
    assert_eq!(errors.len(), 1);
    let msg = errors[0].to_string();
    assert!(
        msg.starts_with("manifests/web.yaml: Service default/web"),
        "{msg}"
    );
    assert!(msg.contains("spec.ports[0].targetPort"), "{msg}");
    assert!(msg.contains("\"web-port\""), "{msg}");
    assert_eq!(after.frontends, before.frontends);
    assert_eq!(after.map_contents(), before.map_contents());
}

#[test]
fn terminating_serving_endpoints_are_used_only_when_none_is_ready() {
    let m = model(
        vec![svc(
            "web",
            Some([10, 96, 0, 10]),
            80,
            TargetPort::Number(8080),
        )],
        vec![slice(
            "web",
            "http",
            8080,
            vec![
                ep([10, 244, 0, 11], false, true),
                ep([10, 244, 0, 12], false, false),
            ],
        )],
    );
    let (c, _) = compile(&m, &CompileOptions::default(), &Compiled::default());
    assert_eq!(
        ips(frontend(&c, [10, 96, 0, 10], 80)),
        vec![(Ipv4Addr::new(10, 244, 0, 11), 8080)]
    );
}

#[test]
fn no_slice_means_a_frontend_with_no_backend() {
    let m = model(
        vec![svc(
            "web",
            Some([10, 96, 0, 10]),
            80,
            TargetPort::Number(8080),
        )],
        vec![],
    );
    let (c, errors) = compile(&m, &CompileOptions::default(), &Compiled::default());
    assert!(errors.is_empty());
    assert!(frontend(&c, [10, 96, 0, 10], 80).backends.is_empty());
    let key = ServiceKey::new(ipv4_be([10, 96, 0, 10]), port_be(80), PROTO_TCP, 0);
    assert_eq!(c.map_contents().services[&key].count, 0);
}

#[test]
fn ids_stay_stable_across_unrelated_changes() {
    let a = svc("a", Some([10, 96, 0, 10]), 80, TargetPort::Number(8080));
    let b = svc("b", Some([10, 96, 0, 11]), 80, TargetPort::Number(8080));
    let sa = slice(
        "a",
        "http",
        8080,
        vec![
            ep([10, 244, 0, 11], true, false),
            ep([10, 244, 0, 12], true, false),
        ],
    );
    let (first, _) = compile(
        &model(vec![b.clone()], vec![sa.clone()]),
        &CompileOptions::default(),
        &Compiled::default(),
    );
    let (second, _) = compile(
        &model(vec![a, b], vec![sa]),
        &CompileOptions::default(),
        &first,
    );
    assert_eq!(
        frontend(&first, [10, 96, 0, 11], 80).svc_id,
        frontend(&second, [10, 96, 0, 11], 80).svc_id
    );
    assert_ne!(
        frontend(&second, [10, 96, 0, 10], 80).svc_id,
        frontend(&second, [10, 96, 0, 11], 80).svc_id
    );
}

#[test]
fn cluster_ips_are_allocated_from_the_cidr_and_kept() {
    let opts = CompileOptions {
        service_cidr: (Ipv4Addr::new(10, 96, 0, 0), 24),
        ..Default::default()
    };
    let m = model(
        vec![
            svc("gw", None, 8080, TargetPort::Number(8080)),
            svc("x", None, 80, TargetPort::Number(80)),
        ],
        vec![],
    );
    let (c, errors) = compile(&m, &opts, &Compiled::default());
    assert!(errors.is_empty());
    let gw = c.allocated_ips[&ObjectRef::new("default", "gw")];
    let x = c.allocated_ips[&ObjectRef::new("default", "x")];
    assert_ne!(gw, x);
    for ip in [gw, x] {
        assert_eq!(&ip.octets()[..3], &[10, 96, 0]);
        assert!(ip.octets()[3] >= 2 && ip.octets()[3] <= 254, "{ip}");
    }
    let (again, _) = compile(&m, &opts, &c);
    assert_eq!(again.allocated_ips, c.allocated_ips);
}

#[test]
fn two_services_on_one_frontend_conflict_and_the_first_keeps_it() {
    let m = model(
        vec![
            svc("a", Some([10, 96, 0, 10]), 80, TargetPort::Number(1)),
            svc("b", Some([10, 96, 0, 10]), 80, TargetPort::Number(2)),
        ],
        vec![],
    );
    let (c, errors) = compile(&m, &CompileOptions::default(), &Compiled::default());
    assert_eq!(frontend(&c, [10, 96, 0, 10], 80).service.name, "a");
    assert!(
        matches!(&errors[..], [CompileError::FrontendConflict { .. }]),
        "{errors:?}"
    );
    assert!(errors[0].to_string().contains("Service default/b"));
}

#[test]
fn policy_and_affinity_become_flags() {
    let mut s = svc("web", Some([10, 96, 0, 10]), 80, TargetPort::Number(8080));
    s.lb_policy = Some(LbPolicy::RoundRobin);
    s.session_affinity = Some(SessionAffinity {
        timeout_seconds: 30,
    });
    let (c, _) = compile(
        &model(vec![s], vec![]),
        &CompileOptions::default(),
        &Compiled::default(),
    );
    let key = ServiceKey::new(ipv4_be([10, 96, 0, 10]), port_be(80), PROTO_TCP, 0);
    let header = c.map_contents().services[&key];
    assert_eq!(header.flags, SVC_FLAG_ROUND_ROBIN | SVC_FLAG_AFFINITY);
    assert_eq!(header.affinity_timeout_sec, 30);
}

#[test]
fn steered_frontends_point_at_the_proxy_and_keep_their_real_backends_in_compiled() {
    let m = model(
        vec![
            svc("web", Some([10, 96, 0, 10]), 80, TargetPort::Number(8080)),
            svc("api", Some([10, 96, 0, 11]), 80, TargetPort::Number(8080)),
        ],
        vec![
            slice(
                "web",
                "http",
                8080,
                vec![
                    ep([10, 244, 0, 11], true, false),
                    ep([10, 244, 0, 12], true, false),
                ],
            ),
            slice("api", "http", 8080, vec![ep([10, 244, 0, 13], true, false)]),
        ],
    );
    let (c, _) = compile(&m, &CompileOptions::default(), &Compiled::default());
    let web = FrontendAddr {
        ip: Ipv4Addr::new(10, 96, 0, 10),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let proxy = std::net::SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 1), 15100);
    let maps = c.map_contents_steered(
        &[(web, proxy)].into(),
        &BTreeMap::new(),
        &crate::steer::FailClosed::None,
    );

    let key = ServiceKey::new(ipv4_be([10, 96, 0, 10]), port_be(80), PROTO_TCP, 0);
    let header = maps.services[&key];
    // The header names the proxy listener; the slots keep the endpoints for the L4 fallback.
    assert_eq!(header.count, 2);
    assert_eq!(
        header.flags & (meshpath_common::SVC_FLAG_STEERED | meshpath_common::SVC_FLAG_FAIL_CLOSED),
        meshpath_common::SVC_FLAG_STEERED
    );
    let slot1 = maps.backends[&maps.services[&key.with_slot(1)].backend_id];
    assert_eq!(slot1.ip_be, ipv4_be([10, 244, 0, 11]));
    let proxy_id = header.backend_id;
    assert_eq!(maps.backends[&proxy_id].ip_be, ipv4_be([10, 244, 0, 1]));
    assert_eq!(maps.backends[&proxy_id].port_be, port_be(15100));
    assert!(
        !c.backend_ids.values().any(|id| *id == proxy_id),
        "proxy id must not collide"
    );
    // The unsteered service is untouched, and `compile` still knows web's real backends.
    let api = ServiceKey::new(ipv4_be([10, 96, 0, 11]), port_be(80), PROTO_TCP, 0);
    assert_eq!(maps.services[&api], c.map_contents().services[&api]);
    assert_eq!(frontend(&c, [10, 96, 0, 10], 80).backends.len(), 2);

    let closed = c.map_contents_steered(
        &[(web, proxy)].into(),
        &BTreeMap::new(),
        &crate::steer::FailClosed::from_names(&["default/web".into()]),
    );
    assert_ne!(
        closed.services[&key].flags & meshpath_common::SVC_FLAG_FAIL_CLOSED,
        0
    );
}

#[test]
fn weighted_tcp_routes_become_slots_in_proportion() {
    let m = model(
        vec![svc(
            "db",
            Some([10, 96, 0, 10]),
            5432,
            TargetPort::Number(5432),
        )],
        vec![slice(
            "db",
            "http",
            5432,
            vec![
                ep([10, 244, 0, 11], true, false),
                ep([10, 244, 0, 12], true, false),
                ep([10, 244, 0, 13], true, false),
            ],
        )],
    );
    let (c, _) = compile(&m, &CompileOptions::default(), &Compiled::default());
    let be = |last: u8| BackendAddr {
        ip: Ipv4Addr::new(10, 244, 0, last),
        port: 5432,
        protocol: Protocol::Tcp,
    };
    let fe = FrontendAddr {
        ip: Ipv4Addr::new(10, 96, 0, 10),
        port: 5432,
        protocol: Protocol::Tcp,
    };
    // v1 = {11} at 20, v2 = {12, 13} at 80, and an empty subset at 0.
    let weighted = [(
        fe,
        vec![(vec![be(11)], 20), (vec![be(12), be(13)], 80), (vec![], 0)],
    )]
    .into();
    let maps = c.map_contents_steered(&BTreeMap::new(), &weighted, &crate::steer::FailClosed::None);
    let key = ServiceKey::new(ipv4_be([10, 96, 0, 10]), port_be(5432), PROTO_TCP, 0);
    assert_eq!(maps.services[&key].count, 100);
    let mut per_backend: BTreeMap<u32, u32> = BTreeMap::new();
    for slot in 1..=100 {
        *per_backend
            .entry(maps.services[&key.with_slot(slot)].backend_id)
            .or_default() += 1;
    }
    let count = |b: BackendAddr| per_backend[&c.backend_ids[&b]];
    assert_eq!((count(be(11)), count(be(12)), count(be(13))), (20, 40, 40));
}

#[test]
fn the_datapath_capacities_bound_the_ids_and_the_error_names_the_flag() {
    let opts = CompileOptions {
        max_frontends: 3,
        max_backends: 2,
        ..Default::default()
    };
    let m = model(
        vec![
            svc("a", Some([10, 96, 0, 1]), 80, TargetPort::Number(80)),
            svc("b", Some([10, 96, 0, 2]), 80, TargetPort::Number(80)),
            svc("c", Some([10, 96, 0, 3]), 80, TargetPort::Number(80)),
        ],
        vec![slice(
            "a",
            "",
            80,
            vec![
                ep([10, 0, 0, 1], true, false),
                ep([10, 0, 0, 2], true, false),
                ep([10, 0, 0, 3], true, false),
            ],
        )],
    );
    let (c, errors) = compile(&m, &opts, &Compiled::default());
    assert_eq!(c.frontends.len(), 2, "ids 1 and 2");
    assert!(c.frontends.values().all(|f| f.svc_id < 3));
    assert_eq!(c.backend_ids.len(), 2);
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter()
            .any(|e| e.contains("at most 2 frontends: --max-frontends")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|e| e.contains("at most 2 backends: --max-backends")),
        "{text:?}"
    );
}
