//! The generated rules' shape against what kube-proxy writes.

use super::*;

#[test]
fn kube_proxy_shape() {
    let svc = Service {
        name: "default/web:p".into(),
        cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
        port: 80,
        node_port: None,
        endpoints: vec![
            "10.244.0.10:8080".parse().unwrap(),
            "10.244.0.11:8080".parse().unwrap(),
        ],
    };
    let text = restore_text(&build("abc123", "10.244.0.0/16", &[svc]));
    assert!(text.starts_with("*nat\n:KUBE-SERVICES-abc123 - [0:0]\n"));
    assert!(text.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES-abc123\n"));
    assert!(text.contains("-A OUTPUT -m comment"));
    // First of two endpoints: probability 1/2; the last one unconditional.
    assert!(text.contains("--comment \"default/web:p -> 10.244.0.10:8080\" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-abc123-0-0\n"));
    assert!(
        text.contains("--comment \"default/web:p -> 10.244.0.11:8080\" -j KUBE-SEP-abc123-0-1\n")
    );
    assert!(text.contains("-A KUBE-SEP-abc123-0-1 -p tcp -m comment --comment default/web:p -m tcp -j DNAT --to-destination 10.244.0.11:8080\n"));
    assert!(text.ends_with("COMMIT\n"));
    for line in text.lines().filter(|l| l.starts_with(':')) {
        let name = line[1..].split(' ').next().unwrap();
        assert!(name.len() <= 28, "{name} too long for iptables");
    }
}

#[test]
fn node_port_shape() {
    let svc = Service {
        name: "default/web:p".into(),
        cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
        port: 80,
        node_port: Some(30080),
        endpoints: vec!["10.244.2.10:8080".parse().unwrap()],
    };
    let text = restore_text(&build("abc123", "10.244.0.0/16", &[svc]));
    assert!(text.contains(":KUBE-NODEPORTS-abc123 - [0:0]\n"));
    assert!(text.contains("-A KUBE-NODEPORTS-abc123 -p tcp -m comment --comment default/web:p -m tcp --dport 30080 -j KUBE-EXT-abc123-0\n"));
    assert!(text.contains("-A KUBE-EXT-abc123-0 -m comment --comment \"masquerade traffic for default/web:p external destinations\" -j KUBE-MARK-MASQ-abc123\n-A KUBE-EXT-abc123-0 -j KUBE-SVC-abc123-0\n"));
    // The node-port jump is the last rule of KUBE-SERVICES.
    let last = text
        .lines()
        .rfind(|l| l.starts_with("-A KUBE-SERVICES-abc123 "))
        .unwrap();
    assert!(
        last.ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS-abc123"),
        "{last}"
    );
}
