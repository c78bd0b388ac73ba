//! `localityLbSetting`: endpoints carry their node's locality (else their slice's zone), and
//! the cluster policy carries the settings Istio would apply (its default when not written).

use std::net::SocketAddr;

use meshpath_model::l7::LocalityLb;
use meshpath_model::Locality;

use super::{key, ok, CLUSTER};
use crate::l7::{needs_proxy, node_locality};

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: geo}\nspec:\n  clusterIP: 10.96.0.90\n  ports:\n  - {name: http, port: 80}\n---\n\
                   apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: geo-1\n  labels: {kubernetes.io/service-name: geo}\n\
                   addressType: IPv4\nports:\n- {name: http, port: 80}\nendpoints:\n\
                   - {addresses: [10.244.9.1], nodeName: n1, zone: ignored}\n- {addresses: [10.244.9.2], zone: z9}\n- {addresses: [10.244.9.3]}\n---\n\
                   apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels:\n    topology.kubernetes.io/region: r1\n    topology.kubernetes.io/zone: z1\n";

fn dr(lb: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: geo}}\nspec:\n  host: geo\n  trafficPolicy:\n    loadBalancer:\n{lb}")
}

fn locality(region: &str, zone: &str) -> Locality {
    Locality {
        region: region.into(),
        zone: zone.into(),
        subzone: String::new(),
    }
}

#[test]
fn endpoints_carry_their_nodes_locality_else_their_zone() {
    // A rule naming the Service gives it its cluster in the table.
    let rule = dr("      simple: ROUND_ROBIN\n");
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("geo.yaml", SVC),
        ("dr.yaml", &rule),
    ]);
    let cluster = &out.config.clusters[&key("geo", 80, None)];
    let by_addr = |a: [u8; 4]| {
        let addr = SocketAddr::from((a, 80));
        cluster
            .endpoints
            .iter()
            .find(|e| e.addr == addr)
            .map(|e| e.locality.clone())
    };
    assert_eq!(by_addr([10, 244, 9, 1]), Some(locality("r1", "z1")));
    assert_eq!(by_addr([10, 244, 9, 2]), Some(locality("", "z9")));
    assert_eq!(by_addr([10, 244, 9, 3]), Some(Locality::default()));
    // Istio's default: locality load balancing on, no settings.
    assert_eq!(cluster.policy.locality_lb, Some(LocalityLb::default()));
    let model = super::model(&[("geo.yaml", SVC)]);
    assert_eq!(node_locality(&model, Some("n1")), locality("r1", "z1"));
    assert_eq!(node_locality(&model, Some("n2")), Locality::default());
}

#[test]
fn settings_are_carried_and_disabled_is_none() {
    let distribute = dr("      localityLbSetting:\n        distribute:\n        - from: r1/z1/*\n          to: {\"r1/z1/*\": 80, \"r1/z2/*\": 20}\n");
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("geo.yaml", SVC),
        ("dr.yaml", &distribute),
    ]);
    let lb = out.config.clusters[&key("geo", 80, None)]
        .policy
        .locality_lb
        .clone()
        .expect("enabled");
    assert_eq!(lb.distribute.len(), 1);
    assert_eq!(
        lb.distribute[0].to,
        [("r1/z1/*".to_owned(), 80), ("r1/z2/*".to_owned(), 20)]
    );
    // Weights are drawn per request: the port is steered to the proxy.
    assert!(needs_proxy(&out.config)
        .iter()
        .any(|a| a.port == 80 && a.ip == std::net::Ipv4Addr::new(10, 96, 0, 90)));

    let off = dr("      simple: RANDOM\n      localityLbSetting: {enabled: false}\n");
    let out = ok(&[
        ("cluster.yaml", CLUSTER),
        ("geo.yaml", SVC),
        ("dr.yaml", &off),
    ]);
    assert_eq!(
        out.config.clusters[&key("geo", 80, None)]
            .policy
            .locality_lb,
        None
    );
}
