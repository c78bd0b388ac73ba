//! Socket redirection stays on its node: with `--socket-redirect all` on both harness nodes (one
//! kernel, two agents, two pin dirs), a pod on node 1 talking to a pod on node 2 through a
//! ClusterIP is put in node 1's SOCKHASH and its peer in node 2's, so sk_msg finds no peer and
//! the bytes cross the uplinks; a shared map would hand them over inside the kernel.

use std::net::Ipv4Addr;

use meshpath_tests::agent::counter;
use meshpath_tests::manifests::docs;
use meshpath_tests::{addr, skip_unless, Node, Proxy, Source, Target, AGENT};

use super::remote::{node_port_service, route_pod_address, route_remote_pod, REMOTE_POD};
use super::{netns_exec, Outside, NODE1_IP, NODE2_IP};

/// Node 1's client pod, on an address of its own (both harness nodes number their pods alike).
const CLIENT_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);

fn uplink_tx_packets(node: &Node) -> u64 {
    netns_exec(
        node.node_netns_name(),
        &["cat", "/sys/class/net/ul/statistics/tx_packets"],
    )
    .expect("uplink statistics")
    .trim()
    .parse()
    .expect("a count")
}

#[test]
fn socket_redirection_never_hands_bytes_across_nodes() {
    skip_unless!(AGENT);
    let node1 = Node::new(1).expect("node 1");
    // Node 2's second pod is the control: a client on the server's own node is handed over.
    let node2 = Node::new(2).expect("node 2");
    let _outside = Outside::build(
        &node1.id().base(),
        &[(&node1, NODE1_IP), (&node2, NODE2_IP)],
    )
    .expect("lan and uplinks");
    route_remote_pod(&node1, &node2);
    route_pod_address(&node1, CLIENT_POD, &node2, NODE1_IP);

    node2
        .spawn_ready(
            0,
            "web-n2",
            &["serve", "--name", "web-n2", "--tcp", "9090"].map(String::from),
        )
        .expect("server on node 2");
    let manifest = docs(&[node_port_service(
        "far",
        "10.96.0.31",
        "Cluster",
        &[("TCP", "echo", 30095, 9090)],
        &[(REMOTE_POD, "n2")],
    )]);
    let agent = |node: &Node, name: &str| {
        let dir = node
            .write_manifests(&[("svc.yaml", manifest.clone())])
            .expect("manifests");
        node.start_agent(
            Source::Manifests(&dir),
            Proxy::Off,
            &["--socket-redirect", "all", "--node-name", name],
        )
        .expect("agent")
    };
    let a1 = agent(&node1, "n1");
    let a2 = agent(&node2, "n2");

    let before = uplink_tx_packets(&node1);
    let r = node1
        .tcp(Target::Pod(0), addr("10.96.0.31", 80), 20)
        .expect("client on node 1");
    assert_eq!(r.count("web-n2"), 20, "{r:?}");
    let sent = uplink_tx_packets(&node1) - before;
    // Each exchange is at least a SYN, the request and an ACK out of node 1.
    assert!(
        sent >= 60,
        "node 1's uplink sent {sent} packets for 20 exchanges"
    );

    let (s1, s2) = (
        a1.status().expect("status 1"),
        a2.status().expect("status 2"),
    );
    assert!(counter(&s1, "connect_translated") >= 20, "{s1:#}");
    // Both ends were in a SOCKHASH (the redirection was on), each in its own node's...
    assert!(counter(&s1, "sock_inserted") >= 20, "node 1: {s1:#}");
    assert!(counter(&s2, "sock_inserted") >= 20, "node 2: {s2:#}");
    // ...so neither side's sk_msg ever found the other.
    assert_eq!(counter(&s1, "msg_redirected"), 0, "node 1: {s1:#}");
    assert_eq!(counter(&s2, "msg_redirected"), 0, "node 2: {s2:#}");

    // The control: the same exchange from node 2's other pod is redirected, so the counter
    // above would have moved had the two nodes shared a map.
    let r = node2
        .tcp(Target::Pod(1), addr("10.96.0.31", 80), 20)
        .expect("client on node 2");
    assert_eq!(r.count("web-n2"), 20, "{r:?}");
    let s2 = a2.status().expect("status 2");
    assert!(counter(&s2, "msg_redirected") >= 20, "node 2: {s2:#}");
}
