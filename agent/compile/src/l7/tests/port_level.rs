//! `portLevelSettings`: a port's settings replace the policy's own parts for that port's
//! clusters, and decide whether the port needs the proxy.

use meshpath_model::l7::LoadBalancer;
use meshpath_model::ObjectRef;

use super::{addr, ok, ClusterKey, CLUSTER};
use crate::l7::needs_proxy;

fn gateway(port: u16) -> ClusterKey {
    ClusterKey {
        service: ObjectRef::new("default", "golang-app-gateway-svc"),
        port,
        subset: None,
        view: None,
    }
}

#[test]
fn a_ports_settings_override_the_policy_for_that_port() {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: gw, namespace: default}\nspec:\n  \
              host: golang-app-gateway-svc\n  trafficPolicy:\n    loadBalancer: {simple: RANDOM}\n    \
              connectionPool: {http: {http1MaxPendingRequests: 7}}\n    portLevelSettings:\n    \
              - port: {number: 8080}\n      loadBalancer: {simple: LEAST_REQUEST}\n      \
              outlierDetection: {consecutive5xxErrors: 3}\n    - port: {number: 9999}\n      \
              loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n";
    let out = ok(&[("cluster.yaml", CLUSTER), ("dr.yaml", dr)]);
    let policy = &out.config.clusters[&gateway(8080)].policy;
    assert!(
        matches!(policy.load_balancer, LoadBalancer::LeastRequest),
        "{:?}",
        policy.load_balancer
    );
    // Parts the port does not set come from the policy.
    assert_eq!(policy.connection_pool.http1_max_pending_requests, Some(7));
    assert_eq!(
        policy
            .outlier_detection
            .as_ref()
            .and_then(|o| o.consecutive_5xx_errors),
        Some(3)
    );
    // LEAST_REQUEST on 8080 is the proxy's to enforce: the port is steered.
    assert!(needs_proxy(&out.config).iter().any(|a| a.port == 8080
        && std::net::SocketAddr::from((a.ip, a.port)) == addr([10, 96, 0, 40], 8080)));
}

#[test]
fn without_a_ports_entry_the_policy_applies() {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: gw, namespace: default}\nspec:\n  \
              host: golang-app-gateway-svc\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    portLevelSettings:\n    \
              - port: {number: 9999}\n      loadBalancer: {simple: LEAST_REQUEST}\n";
    let out = ok(&[("cluster.yaml", CLUSTER), ("dr.yaml", dr)]);
    assert!(!needs_proxy(&out.config).iter().any(|a| a.port == 8080));
}
