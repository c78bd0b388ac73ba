//! NodePorts whose endpoints run on other nodes, refusals, and flows whose backend leaves, on
//! the same two-node topology. Node 2's pod gets a second address in a range of its own
//! (10.244.2.0/24, routed by node 1 via node 2's uplink address) because both harness nodes
//! number their pods alike.

use std::io::Write;
use std::net::Ipv4Addr;
use std::time::Duration;

use meshpath_tests::agent::{backends, counter};
use meshpath_tests::manifests::{docs, write};
use meshpath_tests::{
    addr, skip_line, skip_unless, wait_until, ClientReport, Node, Proxy, Source, AGENT,
};

use super::{assert_no_netfilter_rules, ip, tcx_supported, Outside, CLIENT_IP, NODE1_IP, NODE2_IP};

/// Node 2's pod, as the cluster knows it.
pub(super) const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
const CLUSTER_TCP: u16 = 30081;
const CLUSTER_UDP: u16 = 30054;
const LOCAL_TCP: u16 = 30082;
const LOCAL_ONLY_REMOTE: u16 = 30083;
const NO_ENDPOINT_UDP: u16 = 30085;
const HOLD_PORT: u16 = 30090;
const STICKY_PORT: u16 = 30091;

/// A NodePort Service `name` with `ports` (`name`, protocol, nodePort, targetPort) over
/// `endpoints` (address, node name).
pub(super) fn node_port_service(
    name: &str,
    cluster_ip: &str,
    policy: &str,
    ports: &[(&str, &str, u16, u16)],
    endpoints: &[(Ipv4Addr, &str)],
) -> String {
    let mut svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  \
         type: NodePort\n  clusterIP: {cluster_ip}\n  externalTrafficPolicy: {policy}\n  ports:\n"
    );
    let mut slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n"
    );
    for (i, (proto, port_name, node_port, target)) in ports.iter().enumerate() {
        svc.push_str(&format!(
            "  - name: {port_name}\n    port: {}\n    targetPort: {target}\n    protocol: {proto}\n    nodePort: {node_port}\n",
            80 + i
        ));
        slice.push_str(&format!(
            "- name: {port_name}\n  port: {target}\n  protocol: {proto}\n"
        ));
    }
    if endpoints.is_empty() {
        slice.push_str("endpoints: []\n");
    } else {
        slice.push_str("endpoints:\n");
    }
    for (ip, node) in endpoints {
        slice.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  nodeName: {node}\n  conditions:\n    ready: true\n"
        ));
    }
    docs(&[svc, slice])
}

fn manifest(local_pod: Ipv4Addr, hold_endpoints: &[(Ipv4Addr, &str)]) -> String {
    docs(&[
        node_port_service(
            "remote",
            "10.96.0.21",
            "Cluster",
            &[
                ("TCP", "http", CLUSTER_TCP, 8080),
                ("UDP", "dns", CLUSTER_UDP, 5353),
            ],
            &[(REMOTE_POD, "n2")],
        ),
        node_port_service(
            "local",
            "10.96.0.22",
            "Local",
            &[("TCP", "http", LOCAL_TCP, 8080)],
            &[(local_pod, "n1"), (REMOTE_POD, "n2")],
        ),
        node_port_service(
            "lonly",
            "10.96.0.23",
            "Local",
            &[("TCP", "http", LOCAL_ONLY_REMOTE, 8080)],
            &[(REMOTE_POD, "n2")],
        ),
        node_port_service(
            "none",
            "10.96.0.24",
            "Cluster",
            &[("UDP", "dns", NO_ENDPOINT_UDP, 5353)],
            &[],
        ),
        // Over both nodes' endpoints: only affinity keeps a client on one of them.
        node_port_service(
            "sticky",
            "10.96.0.26",
            "Cluster",
            &[("TCP", "echo", STICKY_PORT, 9090)],
            &[(local_pod, "n1"), (REMOTE_POD, "n2")],
        )
        .replacen("  ports:\n", "  sessionAffinity: ClientIP\n  ports:\n", 1),
        node_port_service(
            "hold",
            "10.96.0.25",
            "Cluster",
            &[("TCP", "echo", HOLD_PORT, 9090)],
            hold_endpoints,
        ),
    ])
}

/// Gives pod 0 of `home` the address `pod_ip` (besides the one both harness nodes hand out
/// alike), as the source of its answers too, and routes it: `home` to its bridge, `other` via
/// `home`'s uplink address `home_uplink` (the whole `/24`).
pub(super) fn route_pod_address(home: &Node, pod_ip: Ipv4Addr, other: &Node, home_uplink: &str) {
    let (host, src) = (format!("{pod_ip}/32"), pod_ip.to_string());
    let pod = home.pod(0).netns_name();
    ip(&["-n", pod, "addr", "add", &host, "dev", "eth0"]).expect("pod address");
    // Its answers leave from that address too (a UDP server's source is the route's).
    let default = [
        "route",
        "replace",
        "default",
        "via",
        "10.244.0.1",
        "dev",
        "eth0",
    ];
    let mut args = vec!["-n", pod];
    args.extend(default);
    args.extend(["src", &src]);
    ip(&args).expect("pod source address");
    let home_ns = home.node_netns_name();
    ip(&["-n", home_ns, "route", "add", &host, "dev", "br0"]).expect("home node route");
    let net = format!("{}.0/24", src.rsplit_once('.').expect("an IPv4 address").0);
    let other_ns = other.node_netns_name();
    ip(&["-n", other_ns, "route", "add", &net, "via", home_uplink]).expect("other node route");
}

/// Node 2's pod answers on [`REMOTE_POD`] too; node 1 routes that range via node 2.
pub(super) fn route_remote_pod(node1: &Node, node2: &Node) {
    route_pod_address(node2, REMOTE_POD, node1, NODE2_IP);
}

/// The tc counters that moved, for failure messages.
pub(super) fn tc_counters(agent: &meshpath_tests::agent::Agent) -> String {
    let Ok(s) = agent.status() else {
        return "no status".into();
    };
    let Some(all) = s["counters"].as_object() else {
        return "no counters".into();
    };
    all.iter()
        .filter(|(name, n)| name.starts_with("tc_") && n.as_u64().unwrap_or(0) > 0)
        .map(|(name, n)| format!("{name}={n} "))
        .collect()
}

/// The `peer` of every request in an `--http-log` file.
fn peers(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["peer"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn tc_nodeport_cluster_reaches_remote_endpoints_local_keeps_the_client_and_refusals_answer() {
    skip_unless!(AGENT);
    if !tcx_supported() {
        let reason = "needs TCX links (Linux 6.6+); the clsact fallback is covered by tc_nodeport's first test";
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            skip_line("tc_nodeport remote", reason)
        );
        return;
    }
    let node1 = Node::new(1).expect("node 1");
    let node2 = Node::new(1).expect("node 2");
    let outside = Outside::build(
        &node1.id().base(),
        &[(&node1, NODE1_IP), (&node2, NODE2_IP)],
    )
    .expect("lan, uplinks and client");
    route_remote_pod(&node1, &node2);

    let serve = |node: &Node, name: &str| -> std::path::PathBuf {
        let log = node.work_dir().join(format!("{name}.requests"));
        let args: Vec<String> = [
            "serve",
            "--name",
            name,
            "--http",
            "8080",
            "--udp",
            "5353",
            "--tcp",
            "9090",
            "--http-log",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([log.display().to_string()])
        .collect();
        node.spawn_ready(0, name, &args).expect("server");
        log
    };
    let n1_log = serve(&node1, "web-n1");
    let n2_log = serve(&node2, "web-n2");
    let local_pod = node1.pod(0).ip();
    let both = [(local_pod, "n1"), (REMOTE_POD, "n2")];
    let dir = node1
        .write_manifests(&[("svc.yaml", manifest(local_pod, &both))])
        .expect("manifests");
    let netns = format!("/var/run/netns/{}", node1.node_netns_name());
    let mut agent = node1
        .start_agent(
            Source::Manifests(&dir),
            Proxy::Off,
            &[
                "--tc-uplink",
                "ul",
                "--tc-uplink-netns",
                &netns,
                "--node-name",
                "n1",
            ],
        )
        .expect("agent on node 1");
    agent
        .wait_log("tc path attached", Duration::from_secs(10))
        .expect("tc programs attached");
    let client = node1
        .outside()
        .in_netns("client", &outside.client, CLIENT_IP);
    let run = |args: &[&str]| -> ClientReport {
        let v = node1.run_client_in(&client, args).expect("client");
        serde_json::from_value(v).expect("report")
    };
    let at = |port: u16| addr(NODE1_IP, port).to_string();

    // Cluster: node 1 has no endpoint of `remote`; node 2's answers, and sees node 1's address.
    let r = run(&["http", "--addr", &at(CLUSTER_TCP), "--count", "10"]);
    assert_eq!(r.count("web-n2"), 10, "{r:?}\n{}", tc_counters(&agent));
    let seen = peers(&n2_log);
    assert_eq!(seen.len(), 10, "{seen:?}");
    for p in &seen {
        let (host, port) = p.rsplit_once(':').expect("peer address");
        assert_eq!(host, NODE1_IP, "{seen:?}");
        assert!(port.parse::<u16>().expect("port") >= 61_000, "{seen:?}");
    }
    let r = run(&["udp-connected", "--addr", &at(CLUSTER_UDP), "--count", "10"]);
    assert_eq!(r.count("web-n2"), 10, "{r:?}\n{}", tc_counters(&agent));

    // Local: only node 1's endpoint serves, and it sees the client's own address.
    let r = run(&["http", "--addr", &at(LOCAL_TCP), "--count", "10"]);
    assert_eq!(r.count("web-n1"), 10, "{r:?}");
    let seen = peers(&n1_log);
    assert!(
        seen.len() == 10 && seen.iter().all(|p| p.starts_with("192.168.77.100:")),
        "{seen:?}"
    );
    // Local with no endpoint on node 1, and a Service with none at all: refused at once.
    let r = run(&["tcp", "--addr", &at(LOCAL_ONLY_REMOTE), "--count", "3"]);
    assert_eq!(
        (r.ok(), r.errors.get("ECONNREFUSED").copied()),
        (0, Some(3)),
        "{r:?}"
    );
    let r = run(&[
        "udp-connected",
        "--addr",
        &at(NO_ENDPOINT_UDP),
        "--count",
        "3",
    ]);
    assert_eq!(
        (r.ok(), r.errors.get("ECONNREFUSED").copied()),
        (0, Some(3)),
        "{r:?}"
    );

    // sessionAffinity: ClientIP: every connection of the client goes to the same backend.
    let r = run(&["tcp", "--addr", &at(STICKY_PORT), "--count", "20"]);
    assert!(
        r.count("web-n1") == 20 || r.count("web-n2") == 20,
        "{r:?}\n{}",
        tc_counters(&agent)
    );

    // A long-lived connection survives a change to another endpoint, and is reset once its
    // own endpoint leaves.
    let mut hold = node1
        .hold_in(&client, addr(NODE1_IP, HOLD_PORT))
        .expect("held connection");
    assert_eq!(hold.echo("one").expect("echo"), "one");
    let (own, other) = if hold.name() == "web-n1" {
        (both[0], both[1])
    } else {
        (both[1], both[0])
    };
    let rewrite = |eps: &[(Ipv4Addr, &str)]| {
        write(&dir, "svc.yaml", &manifest(local_pod, eps)).expect("manifest rewrite");
        let want = eps.len();
        assert!(
            wait_until(Duration::from_secs(10), || agent
                .status()
                .is_ok_and(|s| backends(&s, "default/hold:").len() == want)),
            "hold's endpoints never became {eps:?}"
        );
    };
    rewrite(&[own]);
    assert_eq!(
        hold.echo("two").expect("echo after an unrelated change"),
        "two"
    );
    rewrite(&[other]);
    // The agent forgets the departed backend's flows once the new endpoints are programmed.
    if let Err(e) = agent.wait_log("tc conntrack swept", Duration::from_secs(10)) {
        panic!("{e:#}\n{}", agent.log());
    }
    let err = hold
        .echo("three")
        .expect_err("the departed backend's connection still answers");
    assert!(
        format!("{err:#}").to_lowercase().contains("reset"),
        "{err:#}"
    );

    let s = agent.status().expect("status");
    for (name, at_least) in [
        ("tc_snat_forwarded", 20),
        ("tc_snat_reply_reversed", 20),
        ("tc_no_backend", 6),
        ("tc_reset_sent", 4),
        ("tc_unreachable_sent", 3),
        ("tc_stale_flow", 1),
        ("tc_affinity_hit", 19),
    ] {
        assert!(counter(&s, name) >= at_least, "{name}: {s}");
    }
    for failure in [
        "tc_slot_missing",
        "tc_ct_update_failed",
        "tc_rewrite_failed",
        "tc_snat_ports_exhausted",
        "tc_fib_failed",
        "tc_refusal_failed",
        "tc_affinity_update_failed",
    ] {
        assert_eq!(counter(&s, failure), 0, "{failure}: {s}");
    }
    for ns in [
        node1.node_netns_name(),
        node2.node_netns_name(),
        &outside.lan,
    ] {
        assert_no_netfilter_rules(ns);
    }
}
