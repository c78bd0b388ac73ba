//! How a `v1` Service is reached from outside the cluster: `spec.externalIPs`,
//! `status.loadBalancer.ingress[].ip` and `spec.externalTrafficPolicy` → [`ExternalAccess`].
//! (Each port's `nodePort` is read with the port, in `service`.)

use std::net::Ipv6Addr;

use k8s_openapi::api::core::v1 as core;

use meshpath_model::{ExternalAccess, ExternalTrafficPolicy};

use super::fields::{non_empty, Ctx};
use crate::error::{ConvertError, Invalid};

pub(super) fn external_access(
    ctx: &Ctx,
    svc: &core::Service,
    spec: &core::ServiceSpec,
) -> Result<ExternalAccess, ConvertError> {
    let mut external_ips = Vec::new();
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if let Some(ip) = ipv4_or_skip(ctx, format!("spec.externalIPs[{i}]"), ip)? {
            external_ips.push(ip);
        }
    }
    let mut load_balancer_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, entry) in ingress.into_iter().flatten().enumerate() {
        // A hostname-only ingress (some cloud load balancers) has no address to match here.
        let Some(ip) = non_empty(&entry.ip) else {
            continue;
        };
        let field = format!("status.loadBalancer.ingress[{i}].ip");
        if let Some(ip) = ipv4_or_skip(ctx, field, ip)? {
            load_balancer_ips.push(ip);
        }
    }
    let traffic_policy = match non_empty(&spec.external_traffic_policy).unwrap_or("Cluster") {
        "Cluster" => ExternalTrafficPolicy::Cluster,
        "Local" => ExternalTrafficPolicy::Local,
        other => {
            return Err(ctx.err(
                "spec.externalTrafficPolicy",
                Invalid::NotOneOf {
                    value: other.to_owned(),
                    expected: "Cluster, Local",
                },
            ))
        }
    };
    Ok(ExternalAccess {
        external_ips,
        load_balancer_ips,
        traffic_policy,
    })
}

/// An IPv4 address; `None` for an IPv6 one (the data path is IPv4 only, and a dual-stack
/// Service lists both families: its IPv4 addresses still work); an error for anything else.
fn ipv4_or_skip(
    ctx: &Ctx,
    field: String,
    value: &str,
) -> Result<Option<std::net::Ipv4Addr>, ConvertError> {
    if value.parse::<Ipv6Addr>().is_ok() {
        return Ok(None);
    }
    ctx.ipv4(field, value).map(Some)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use meshpath_model::{ExternalTrafficPolicy, TargetPort};

    use super::super::{service::service, Converted};

    fn convert(value: serde_json::Value) -> Result<meshpath_model::Service, String> {
        let svc: k8s_openapi::api::core::v1::Service =
            serde_json::from_value(value).expect("valid Service JSON");
        match service(&svc) {
            Ok(Converted::Accepted(s)) => Ok(s),
            Ok(other) => panic!("expected Accepted, got {other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn node_ports_external_ips_load_balancer_ips_and_policy_are_read() {
        let s = convert(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {
                "type": "LoadBalancer", "clusterIP": "10.96.0.10",
                "externalTrafficPolicy": "Local",
                "externalIPs": ["192.0.2.7", "2001:db8::7"],
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}
                ]
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "198.51.100.4"}, {"hostname": "lb.example"}, {"ip": "192.0.2.7"}
            ]}}
        }))
        .unwrap();
        assert_eq!(s.ports[0].node_port, Some(30080));
        assert_eq!(s.ports[0].target_port, TargetPort::Number(8080));
        assert_eq!(s.ports[1].node_port, Some(30053));
        assert_eq!(
            s.external.external_ips,
            vec!["192.0.2.7".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            s.external.load_balancer_ips,
            vec![
                "198.51.100.4".parse::<std::net::Ipv4Addr>().unwrap(),
                "192.0.2.7".parse().unwrap()
            ]
        );
        // Each address once, external IPs first.
        assert_eq!(
            s.external.addresses(),
            vec![
                "192.0.2.7".parse::<std::net::Ipv4Addr>().unwrap(),
                "198.51.100.4".parse().unwrap()
            ]
        );
        assert_eq!(s.external.traffic_policy, ExternalTrafficPolicy::Local);
    }

    #[test]
    fn a_cluster_ip_service_has_no_external_access() {
        let s = convert(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"ports": [{"port": 80}]}
        }))
        .unwrap();
        assert_eq!(s.ports[0].node_port, None);
        assert_eq!(s.external, Default::default());
        assert_eq!(s.external.traffic_policy, ExternalTrafficPolicy::Cluster);
    }

    #[test]
    fn bad_values_name_their_field() {
        let bad_ip = convert(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "externalIPs": ["nope"], "ports": [{"port": 80}]}
        }))
        .unwrap_err();
        assert!(bad_ip.contains("spec.externalIPs[0]"), "{bad_ip}");
        let bad_policy = convert(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "externalTrafficPolicy": "Nearest", "ports": [{"port": 80}]}
        }))
        .unwrap_err();
        assert!(
            bad_policy.contains("spec.externalTrafficPolicy"),
            "{bad_policy}"
        );
        let bad_port = convert(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 70000}]}
        }))
        .unwrap_err();
        assert!(bad_port.contains("spec.ports[0].nodePort"), "{bad_port}");
    }
}
