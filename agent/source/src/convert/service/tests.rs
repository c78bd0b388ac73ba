use std::collections::BTreeMap;
use std::fmt;

use serde_json::json;

use meshpath_model::{ObjectRef, Protocol};

use super::*;

fn svc(value: serde_json::Value) -> core::Service {
    serde_json::from_value(value).expect("valid Service JSON")
}

fn web(spec: serde_json::Value) -> core::Service {
    svc(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": spec}))
}

fn accepted<T: fmt::Debug>(result: Result<Converted<T>, ConvertError>) -> T {
    match result {
        Ok(Converted::Accepted(t)) => t,
        other => panic!("expected Accepted, got {other:?}"),
    }
}

/// The error's Display, which names object, field and problem.
fn service_err(spec: serde_json::Value) -> String {
    service(&web(spec))
        .expect_err("expected an error")
        .to_string()
}

#[test]
fn service_defaults() {
    let s = accepted(service(&web(
        json!({"ports": [{"port": 80}], "selector": {"app": "web"}}),
    )));
    assert_eq!(s.id, ObjectRef::new("default", "web"));
    assert_eq!(s.cluster_ip, None);
    assert_eq!(
        s.ports,
        vec![ServicePort {
            name: None,
            port: 80,
            target_port: TargetPort::Number(80),
            protocol: Protocol::Tcp,
            app_protocol: None,
            node_port: None,
        }]
    );
    assert_eq!(
        s.selector,
        BTreeMap::from([("app".to_owned(), "web".to_owned())])
    );
    assert_eq!(s.session_affinity, None);
    assert_eq!(s.lb_policy, None);
}

#[test]
fn service_full() {
    let s = accepted(service(&svc(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"},
                     "annotations": {"meshpath.io/lb-policy": "round-robin"}},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
                           {"name": "dns-tcp", "port": 53, "targetPort": "dns-tcp"}]}
    }))));
    assert_eq!(s.id, ObjectRef::new("kube-system", "dns"));
    assert_eq!(s.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
    assert_eq!(s.ports[0].protocol, Protocol::Udp);
    assert_eq!(s.ports[0].target_port, TargetPort::Number(5353));
    assert_eq!(s.ports[1].protocol, Protocol::Tcp);
    assert_eq!(s.ports[1].target_port, TargetPort::Name("dns-tcp".into()));
    assert_eq!(s.lb_policy, Some(LbPolicy::RoundRobin));
    assert_eq!(s.labels["k8s-app"], "kube-dns");
}

#[test]
fn service_ports_errors() {
    assert_eq!(
        service_err(json!({"ports": [{"port": 0}]})),
        "Service default/web: spec.ports[0].port: must be between 1 and 65535, got 0"
    );
    assert_eq!(
        service_err(json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 70000}]})),
        "Service default/web: spec.ports[1].port: must be between 1 and 65535, got 70000"
    );
    assert_eq!(
        service_err(json!({"ports": [{"port": 80, "targetPort": 0}]})),
        "Service default/web: spec.ports[0].targetPort: must be between 1 and 65535, got 0"
    );
    assert_eq!(
        service_err(json!({"ports": [{"port": 80, "targetPort": "8080"}]})),
        "Service default/web: spec.ports[0].targetPort: invalid port name \"8080\": must contain a letter \
         (write a port number without quotes)"
    );
    assert_eq!(
        service_err(json!({"ports": [{"port": 80, "targetPort": "Http"}]})),
        "Service default/web: spec.ports[0].targetPort: invalid port name \"Http\": must consist of \
         lower-case letters, digits and '-'"
    );
    assert_eq!(
        service_err(json!({"ports": [{"port": 80, "protocol": "SCTP"}]})),
        "Service default/web: spec.ports[0].protocol: \"SCTP\" is not supported (only TCP and UDP)"
    );
    assert_eq!(
        service_err(json!({"ports": [{"port": 80, "protocol": "tcp"}]})),
        "Service default/web: spec.ports[0].protocol: must be one of TCP, UDP, SCTP, got \"tcp\""
    );
    assert_eq!(
        service_err(json!({"ports": [{"port": 80}, {"port": 81}]})),
        "Service default/web: spec.ports[0].name: required when there is more than one port"
    );
    assert_eq!(
        service_err(json!({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]})),
        "Service default/web: spec.ports[1].name: duplicate value \"a\" (also at spec.ports[0].name)"
    );
    assert_eq!(
        service_err(json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]})),
        "Service default/web: spec.ports[1].port: duplicate value \"80/TCP\" (also at spec.ports[0].port)"
    );
    // The same number for TCP and UDP is fine.
    let s = accepted(service(&web(
        json!({"ports": [{"name": "a", "port": 53}, {"name": "b", "port": 53, "protocol": "UDP"}]}),
    )));
    assert_eq!(s.ports.len(), 2);
}

#[test]
fn service_without_ports() {
    assert_eq!(
        service_err(json!({})),
        "Service default/web: spec.ports: a ClusterIP Service needs at least one port"
    );
    assert_eq!(
        service_err(json!({"type": "LoadBalancer", "ports": []})),
        "Service default/web: spec.ports: a LoadBalancer Service needs at least one port"
    );
    let e = service(&svc(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}),
    ))
    .unwrap_err();
    assert_eq!(e.field, "spec.ports");
}

#[test]
fn service_cluster_ip() {
    assert_eq!(
        service_err(json!({"clusterIP": "10.0.0.256", "ports": [{"port": 80}]})),
        "Service default/web: spec.clusterIP: \"10.0.0.256\" is not a valid IPv4 address"
    );
    assert_eq!(
        service_err(json!({"clusterIP": "fd00::10", "ports": [{"port": 80}]})),
        "Service default/web: spec.clusterIP: IPv6 address \"fd00::10\" is not yet supported (only IPv4)"
    );
    assert_eq!(
        service_err(json!({"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.2"], "ports": [{"port": 80}]})),
        "Service default/web: spec.clusterIPs[0]: \"10.0.0.2\" does not match spec.clusterIP \"10.0.0.1\""
    );
    // clusterIPs alone, with a second (IPv6) family that is not used.
    let s = accepted(service(&web(
        json!({"clusterIPs": ["10.0.0.2", "fd00::2"], "ports": [{"port": 80}]}),
    )));
    assert_eq!(s.cluster_ip, Some(Ipv4Addr::new(10, 0, 0, 2)));
    let s = accepted(service(&web(
        json!({"clusterIP": "", "ports": [{"port": 80}]}),
    )));
    assert_eq!(s.cluster_ip, None);
}

#[test]
fn services_not_programmed_are_skipped() {
    let headless = web(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
    assert_eq!(
        service(&headless),
        Ok(Converted::Skipped(SkipReason::Headless))
    );
    let headless = web(json!({"clusterIP": "None"}));
    assert_eq!(
        service(&headless),
        Ok(Converted::Skipped(SkipReason::Headless))
    );
    // From the seed document.
    let external = svc(json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "my-db-service", "namespace": "prod"},
        "spec": {"type": "ExternalName", "externalName": "my.database.example.com", "ports": [{"port": 3306}]}
    }));
    assert_eq!(
        service(&external),
        Ok(Converted::Skipped(SkipReason::ExternalName))
    );
    // ... and is an alias for DNS, normalised; without a target it is an error.
    assert_eq!(
        super::external_name(&external),
        Some(Ok(Converted::Accepted((
            meshpath_model::ObjectRef::new("prod", "my-db-service"),
            "my.database.example.com".to_owned()
        ))))
    );
    let no_target = svc(json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "db"},
        "spec": {"type": "ExternalName"}
    }));
    let err = super::external_name(&no_target)
        .expect("an ExternalName Service")
        .expect_err("no target");
    assert!(err.to_string().contains("spec.externalName"), "{err}");
    assert_eq!(
        super::external_name(&web(json!({"ports": [{"port": 80}]}))),
        None
    );
    assert_eq!(
        service_err(json!({"type": "Internal", "ports": [{"port": 80}]})),
        "Service default/web: spec.type: must be one of ClusterIP, NodePort, LoadBalancer, ExternalName, \
         got \"Internal\""
    );
}

#[test]
fn session_affinity() {
    let s = accepted(service(&web(
        json!({"sessionAffinity": "ClientIP", "ports": [{"port": 80}]}),
    )));
    assert_eq!(
        s.session_affinity,
        Some(SessionAffinity {
            timeout_seconds: 10800
        })
    );
    let s = accepted(service(&web(json!({
        "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
        "ports": [{"port": 80}]
    }))));
    assert_eq!(
        s.session_affinity,
        Some(SessionAffinity {
            timeout_seconds: 600
        })
    );
    // A config without ClientIP affinity is ignored, as Kubernetes does.
    let s = accepted(service(&web(json!({
        "sessionAffinity": "None", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}},
        "ports": [{"port": 80}]
    }))));
    assert_eq!(s.session_affinity, None);
    for bad in [0, 86401] {
        assert_eq!(
            service_err(json!({
                "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": bad}},
                "ports": [{"port": 80}]
            })),
            format!(
                "Service default/web: spec.sessionAffinityConfig.clientIP.timeoutSeconds: must be between 1 \
                 and 86400, got {bad}"
            )
        );
    }
    assert_eq!(
        service_err(json!({"sessionAffinity": "Cookie", "ports": [{"port": 80}]})),
        "Service default/web: spec.sessionAffinity: must be one of None, ClientIP, got \"Cookie\""
    );
}

#[test]
fn lb_policy_annotation() {
    let with = |policy: &str| {
        service(&svc(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "annotations": {"meshpath.io/lb-policy": policy}},
            "spec": {"ports": [{"port": 80}]}
        })))
    };
    assert_eq!(accepted(with("random")).lb_policy, Some(LbPolicy::Random));
    assert_eq!(
        accepted(with("round-robin")).lb_policy,
        Some(LbPolicy::RoundRobin)
    );
    assert_eq!(
        with("least-conn").unwrap_err().to_string(),
        "Service shop/web: metadata.annotations[\"meshpath.io/lb-policy\"]: must be one of random, round-robin, \
         got \"least-conn\""
    );
}

#[test]
fn object_without_name() {
    let e = service(&svc(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {}}),
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Service default/<unnamed>: metadata.name: required"
    );
}
