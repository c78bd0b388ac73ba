use std::net::Ipv4Addr;

use serde_json::json;

use meshpath_model::{ObjectRef, Protocol};

use super::*;

fn accepted<T: std::fmt::Debug>(result: Result<Converted<T>, ConvertError>) -> T {
    match result {
        Ok(Converted::Accepted(t)) => t,
        other => panic!("expected Accepted, got {other:?}"),
    }
}

fn slice(value: serde_json::Value) -> discovery::EndpointSlice {
    serde_json::from_value(value).expect("valid EndpointSlice JSON")
}

fn web_slice(endpoints: serde_json::Value) -> discovery::EndpointSlice {
    slice(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints
    }))
}

#[test]
fn endpoint_slice_conditions_and_target_ref() {
    let s = accepted(endpoint_slice(&web_slice(json!([
        {"addresses": ["10.1.0.1"], "targetRef": {"kind": "Pod", "name": "web-1"},
         "zone": "z1", "nodeName": "n1"},
        {"addresses": ["10.1.0.2"], "conditions": {"ready": false}},
        {"addresses": ["10.1.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true},
         "targetRef": {"kind": "Node", "name": "node-1"}},
    ]))));
    assert_eq!(s.id, ObjectRef::new("default", "web-abc"));
    assert_eq!(s.service_name, "web");
    assert_eq!(
        s.ports,
        vec![EndpointPort {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp
        }]
    );
    assert_eq!(s.endpoints[0].addresses, vec![Ipv4Addr::new(10, 1, 0, 1)]);
    assert_eq!(s.endpoints[0].conditions, EndpointConditions::default());
    assert_eq!(s.endpoints[0].pod_name.as_deref(), Some("web-1"));
    // Where it runs, for locality load balancing.
    assert_eq!(s.endpoints[0].zone.as_deref(), Some("z1"));
    assert_eq!(s.endpoints[0].node_name.as_deref(), Some("n1"));
    assert_eq!(
        (
            s.endpoints[1].zone.as_deref(),
            s.endpoints[1].node_name.as_deref()
        ),
        (None, None)
    );
    // serving absent: the same as ready.
    let not_ready = EndpointConditions {
        ready: false,
        serving: false,
        terminating: false,
    };
    assert_eq!(s.endpoints[1].conditions, not_ready);
    assert_eq!(s.endpoints[1].pod_name, None);
    let terminating = EndpointConditions {
        ready: false,
        serving: true,
        terminating: true,
    };
    assert_eq!(s.endpoints[2].conditions, terminating);
    assert_eq!(s.endpoints[2].pod_name, None);
}

#[test]
fn endpoint_slice_errors() {
    let err = |s| endpoint_slice(&s).unwrap_err().to_string();
    assert_eq!(
        err(web_slice(json!([{"addresses": ["10.1.0.1", "10.1.0"]}]))),
        "EndpointSlice default/web-abc: endpoints[0].addresses[1]: \"10.1.0\" is not a valid IPv4 address"
    );
    assert_eq!(
        err(web_slice(json!([{"addresses": ["fd00::1"]}]))),
        "EndpointSlice default/web-abc: endpoints[0].addresses[0]: IPv6 address \"fd00::1\" is not yet \
         supported (only IPv4)"
    );
    assert_eq!(
        err(web_slice(json!([{"addresses": []}]))),
        "EndpointSlice default/web-abc: endpoints[0].addresses: must not be empty"
    );
    let unlabelled = slice(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "shop"}, "addressType": "IPv4", "endpoints": []
    }));
    assert_eq!(
        err(unlabelled),
        "EndpointSlice shop/web-abc: metadata.labels[\"kubernetes.io/service-name\"]: required"
    );
    let portless = slice(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "protocol": "UDP"}], "endpoints": []
    }));
    assert_eq!(
        err(portless),
        "EndpointSlice default/web-abc: ports[0].port: required"
    );
    let bogus = slice(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc"}, "addressType": "IPv5", "endpoints": []
    }));
    assert_eq!(
        err(bogus),
        "EndpointSlice default/web-abc: addressType: must be one of IPv4, IPv6, FQDN, got \"IPv5\""
    );
}

#[test]
fn endpoint_slice_other_address_types_are_skipped() {
    for t in ["IPv6", "FQDN"] {
        let s = slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-v6", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": t, "endpoints": [{"addresses": ["fd00::1"]}]
        }));
        assert_eq!(
            endpoint_slice(&s),
            Ok(Converted::Skipped(SkipReason::AddressType(t.into())))
        );
    }
}

fn pod_json(value: serde_json::Value) -> core::Pod {
    serde_json::from_value(value).expect("valid Pod JSON")
}

#[test]
fn pod_conversion() {
    let p = pod(&pod_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"containers": [
            {"name": "app", "ports": [{"name": "http", "containerPort": 8080},
                                      {"containerPort": 9090, "protocol": "UDP"}]},
            {"name": "sidecar"}
        ]},
        "status": {"podIP": "10.1.0.1"}
    })))
    .unwrap();
    assert_eq!(p.id, ObjectRef::new("shop", "web-1"));
    assert_eq!(p.labels["app"], "web");
    assert_eq!(p.ip, Some(Ipv4Addr::new(10, 1, 0, 1)));
    assert_eq!(
        p.container_ports,
        vec![
            ContainerPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Protocol::Tcp
            },
            ContainerPort {
                name: None,
                port: 9090,
                protocol: Protocol::Udp
            },
        ]
    );
    let pending = pod(&pod_json(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
    ))
    .unwrap();
    assert_eq!(pending.ip, None);
    assert!(pending.container_ports.is_empty());
}

#[test]
fn pod_workload_and_trace_sampling() {
    let p = pod(&pod_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "reviews-v1-5d8f7c9b4-x2x7q", "namespace": "bookinfo",
            "labels": {"app": "reviews", "pod-template-hash": "5d8f7c9b4"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "reviews-v1-5d8f7c9b4", "uid": "u"}],
            "annotations": {"proxy.istio.io/config": "tracing:\n  sampling: 12.5\nconcurrency: 2\n"}}
    })))
    .unwrap();
    assert_eq!(p.workload, "reviews-v1");
    assert_eq!(p.trace_sampling_hundredths, Some(1250));

    let p = pod(&pod_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "job-abc", "namespace": "ns",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "job", "uid": "u"}],
            "annotations": {"proxy.istio.io/config": "{tracing: {sampling: 250}}"}}
    })))
    .unwrap();
    assert_eq!(p.workload, "job");
    assert_eq!(p.trace_sampling_hundredths, None, "out of range: ignored");

    let bare = pod(&pod_json(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p",
            "annotations": {"proxy.istio.io/config": "not: [yaml"}}}),
    ))
    .unwrap();
    assert_eq!(bare.workload, "p");
    assert_eq!(bare.trace_sampling_hundredths, None);
}

#[test]
fn pod_errors() {
    let err = |v| pod(&pod_json(v)).unwrap_err().to_string();
    assert_eq!(
        err(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "status": {"podIP": "10.1.0.x"}})
        ),
        "Pod default/p: status.podIP: \"10.1.0.x\" is not a valid IPv4 address"
    );
    assert_eq!(
        err(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"containers": [{"name": "a"}, {"name": "b", "ports": [{"containerPort": 0}]}]}})),
        "Pod default/p: spec.containers[1].ports[0].containerPort: must be between 1 and 65535, got 0"
    );
    assert_eq!(
        err(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"containers": [{"name": "a", "ports": [{"name": "web-http-alternate", "containerPort": 80}]}]}})),
        "Pod default/p: spec.containers[0].ports[0].name: invalid port name \"web-http-alternate\": must be at \
         most 15 characters"
    );
}
