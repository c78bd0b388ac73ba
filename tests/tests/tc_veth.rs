//! The tc programs on the pods' host-side veths against the real kernel, on one harness node
//! (bridge `br0`, pods' veths `vp<i>`, their host ends in the node namespace):
//!
//! - a process in pod 0's network namespace but in an unmanaged cgroup (the socket hooks never
//!   see it) reaches a ClusterIP whose endpoint is pod 1, over TCP and UDP, translated per
//!   packet on pod 0's veth; a managed pod's own connect is translated by the socket hook and
//!   never a second time; with the programs detached the same requests fail;
//! - a ClusterIP without endpoints is refused to that sender (RST, ICMP port unreachable);
//! - pod-to-pod packets go straight into the destination pod with `bpf_redirect_peer`: the
//!   destination's host-side veth transmits nothing (the bridge never forwarded them), while
//!   with `--tc-pod-forward false` the same traffic crosses the bridge;
//! - `sessionAffinity: ClientIP` and `maxConnections` on that path (`tc_veth/limits.rs`).

#[path = "tc_veth/limits.rs"]
mod limits;

use std::io::Write;
use std::time::Duration;

use meshpath_tests::agent::{counter, Agent};
use meshpath_tests::manifests::{docs, endpoint_slice, Ep};
use meshpath_tests::{
    addr, kernel_at_least, run_checked as run, skip_unless, wait_until, Node, Proxy, Source,
    Target, AGENT,
};

const WEB_VIP: &str = "10.96.0.10";
const DNS_VIP: &str = "10.96.0.53";
/// ClusterIPs of Services without endpoints (TCP, UDP).
const EMPTY_TCP_VIP: &str = "10.96.0.60";
const EMPTY_UDP_VIP: &str = "10.96.0.61";

/// (rx, tx) packets of `dev` in namespace `ns`.
fn packets(ns: &str, dev: &str) -> (u64, u64) {
    let out = run("ip", &["-n", ns, "-s", "-j", "link", "show", dev]).expect("ip -s link");
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    let stats = &v[0]["stats64"];
    let n = |dir: &str| stats[dir]["packets"].as_u64().expect("packet count");
    (n("rx"), n("tx"))
}

/// A ClusterIP Service on TCP and one on UDP, both with pod 1 as their one endpoint, and one of
/// each without endpoints.
fn manifest(node: &Node) -> String {
    let backend = node.pod(1).ip();
    let svc = |name: &str, vip: &str, port: u16, target: u16, proto: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  \
             clusterIP: {vip}\n  ports:\n  - name: p\n    port: {port}\n    targetPort: {target}\n    \
             protocol: {proto}\n  selector:\n    app: {name}\n"
        )
    };
    docs(&[
        svc("web", WEB_VIP, 80, 8080, "TCP"),
        endpoint_slice("web", 8080, "TCP", &[Ep::ready(backend)]),
        svc("dns", DNS_VIP, 53, 5353, "UDP"),
        endpoint_slice("dns", 5353, "UDP", &[Ep::ready(backend)]),
        svc("empty-tcp", EMPTY_TCP_VIP, 80, 8080, "TCP"),
        endpoint_slice("empty-tcp", 8080, "TCP", &[]),
        svc("empty-udp", EMPTY_UDP_VIP, 53, 5353, "UDP"),
        endpoint_slice("empty-udp", 5353, "UDP", &[]),
    ])
}

/// Whether TCX links can be made here (Linux ≥ 6.6).
fn tcx_supported() -> bool {
    kernel_at_least(6, 6)
}

/// A node with two pods, servers in both (pod 0's keeps its namespace among the managed
/// cgroup's), routing on; `None` (skip printed) where neither TCX nor clsact exists.
fn node() -> Option<Node> {
    node_with(2)
}

/// [`node`] with `pods` pods (servers in pods 0 and 1 only).
fn node_with(pods: usize) -> Option<Node> {
    let node = Node::new(pods).expect("node");
    let ns = node.node_netns_name().to_owned();
    // With forwarding off, a translated packet (addressed to the bridge's MAC) is routed.
    run(
        "ip",
        &[
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    )
    .expect("sysctl");
    node.spawn_server(1, "web-p1", &[8080], &[5353], &[])
        .expect("server in pod 1");
    node.spawn_server(0, "p0", &[8081], &[], &[])
        .expect("server in pod 0");
    if !tcx_supported() {
        if run(
            "ip",
            &[
                "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "vp0", "clsact",
            ],
        )
        .is_err()
        {
            // Still proves the programs pass this kernel's verifier: the agent loads both
            // before it looks for pods, and logs that it started only then.
            let mut agent = start_loaded(&node, &[]);
            agent.stop().expect("agent stops");
            let test = std::thread::current()
                .name()
                .unwrap_or("tc_veth")
                .to_owned();
            let reason = "no TCX (Linux 6.6+) and no clsact qdisc on this kernel (the veth \
                          programs loaded, nothing to attach them with)";
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                meshpath_tests::skip_line(&test, reason)
            );
            return None;
        }
        run(
            "ip",
            &[
                "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "vp0", "clsact",
            ],
        )
        .expect("tc qdisc del");
    }
    Some(node)
}

/// The agent with the veth path, once it has loaded both programs (before any attach).
fn start_loaded(node: &Node, extra: &[&str]) -> Agent {
    start_loaded_with(node, manifest(node), extra)
}

/// [`start_loaded`] over the manifest `yaml`.
fn start_loaded_with(node: &Node, yaml: String, extra: &[&str]) -> Agent {
    let dir = node
        .write_manifests(&[("svc.yaml", yaml)])
        .expect("manifests");
    let netns = format!("/var/run/netns/{}", node.node_netns_name());
    let mut args = vec![
        "--tc-pod-veths",
        "true",
        "--tc-veth-netns",
        &netns,
        "--tc-veth-scan-ms",
        "100",
    ];
    args.extend(extra);
    let mut agent = node
        .start_agent(Source::Manifests(&dir), Proxy::Off, &args)
        .expect("agent");
    // Generous: under emulation (the 6.1 VM) loading alone takes seconds.
    agent
        .wait_log("pod veth path started", Duration::from_secs(120))
        .expect("veth path started");
    agent
}

/// The agent with the veth path attached to both pods' veths.
fn start(node: &Node, extra: &[&str]) -> Agent {
    start_with(node, 2, manifest(node), extra)
}

/// The agent over the manifest `yaml`, with the veth path attached to all `pods` pods' veths.
fn start_with(node: &Node, pods: usize, yaml: String, extra: &[&str]) -> Agent {
    let agent = start_loaded_with(node, yaml, extra);
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log()
            .matches("pod veth attached")
            .count()
            >= pods),
        "every pod's veth attached: {}",
        agent.log()
    );
    agent
}

fn unpin_veth_links(node: &Node) {
    for e in std::fs::read_dir(node.pin_dir().join("links"))
        .expect("links dir")
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("mp_tc_veth_") {
            std::fs::remove_file(e.path()).expect("unpin veth link");
        }
    }
}

#[test]
fn an_unmanaged_sender_in_a_pod_namespace_reaches_a_cluster_ip_through_the_veth_path() {
    skip_unless!(AGENT);
    let Some(node) = node() else { return };
    let mut agent = start(&node, &[]);
    let web = addr(WEB_VIP, 80);
    let dns = addr(DNS_VIP, 53);

    // A managed pod's connect is translated by the socket hook: the veth sees the backend's
    // address, never a ClusterIP, so it translates nothing.
    let r = node.tcp(Target::Pod(0), web, 5).expect("managed client");
    assert_eq!(r.count("web-p1"), 5, "{r:?}");
    let s = agent.status().expect("status");
    assert_eq!(counter(&s, "tc_veth_new_flow"), 0, "translated twice: {s}");
    assert!(counter(&s, "connect_translated") >= 5, "{s}");

    // The same from the unmanaged cgroup: only the veth program can translate it. TCP's
    // SYN-ACK and a connected UDP socket's reply are accepted only from the ClusterIP, so
    // success proves the replies were reversed too.
    let r = node.tcp(Target::Outside, web, 20).expect("unmanaged tcp");
    assert_eq!(r.count("web-p1"), 20, "{r:?}");
    assert_eq!(r.first_peer.as_deref(), Some("10.96.0.10:80"));
    let r = node
        .udp_connected(Target::Outside, dns, 20)
        .expect("unmanaged udp");
    assert_eq!(r.count("web-p1"), 20, "{r:?}");

    let s = agent.status().expect("status");
    assert!(counter(&s, "tc_veth_new_flow") >= 40, "{s}");
    assert!(counter(&s, "tc_veth_reply_reversed") >= 40, "{s}");
    assert!(counter(&s, "tc_veth_flow_translated") >= 40, "{s}");
    assert!(counter(&s, "tc_veth_redirect_peer") >= 80, "{s}");
    for failure in [
        "tc_veth_no_backend",
        "tc_veth_slot_missing",
        "tc_veth_ct_update_failed",
        "tc_veth_rewrite_failed",
        "tc_veth_redirect_failed",
    ] {
        assert_eq!(counter(&s, failure), 0, "{failure}: {s}");
    }

    // Pinned: the links keep serving with the agent stopped.
    agent.stop().expect("agent stops");
    let r = node.tcp(Target::Outside, web, 3).expect("agent stopped");
    assert_eq!(r.count("web-p1"), 3, "{r:?}");

    // Negative control: detached, nothing else translates the ClusterIP.
    unpin_veth_links(&node);
    let short = |n: u32| {
        node.run_client(
            Target::Outside,
            &[
                "tcp",
                "--addr",
                &web.to_string(),
                "--count",
                &n.to_string(),
                "--timeout-ms",
                "500",
            ],
        )
        .and_then(|v| Ok(serde_json::from_value::<meshpath_tests::ClientReport>(v)?))
    };
    assert!(
        wait_until(Duration::from_secs(5), || short(1)
            .is_ok_and(|r| r.ok() == 0)),
        "the ClusterIP still answers the unmanaged sender after the veth links were unpinned"
    );
    let r = short(5).expect("tcp, detached");
    assert_eq!(r.ok(), 0, "{r:?}");
    let v = node
        .run_client(
            Target::Outside,
            &[
                "udp-connected",
                "--addr",
                &dns.to_string(),
                "--count",
                "5",
                "--timeout-ms",
                "500",
            ],
        )
        .expect("udp, detached");
    let r: meshpath_tests::ClientReport = serde_json::from_value(v).expect("report");
    assert_eq!(r.ok(), 0, "{r:?}");
}

#[test]
fn a_cluster_ip_without_endpoints_is_refused_on_the_veth_path() {
    skip_unless!(AGENT);
    let Some(node) = node() else { return };
    let agent = start(&node, &[]);
    // From the unmanaged sender (only the veth program sees it): refused at once, as the
    // socket path refuses a managed pod's connect, instead of timing out into a drop.
    let refused = |kind: &str, vip: &str, port: u16| {
        let v = node
            .run_client(
                Target::Outside,
                &[
                    kind,
                    "--addr",
                    &addr(vip, port).to_string(),
                    "--count",
                    "3",
                    "--timeout-ms",
                    "2000",
                ],
            )
            .expect("client");
        let r: meshpath_tests::ClientReport = serde_json::from_value(v).expect("report");
        assert_eq!(
            (r.ok(), r.errors.get("ECONNREFUSED").copied()),
            (0, Some(3)),
            "{kind} {vip}: {r:?}\n{}",
            agent.status().map(|s| s.to_string()).unwrap_or_default()
        );
    };
    refused("tcp", EMPTY_TCP_VIP, 80);
    refused("udp-connected", EMPTY_UDP_VIP, 53);
    let s = agent.status().expect("status");
    for (name, want) in [
        ("tc_veth_no_backend", 6),
        ("tc_veth_reset_sent", 3),
        ("tc_veth_unreachable_sent", 3),
        ("tc_veth_refusal_failed", 0),
        ("tc_veth_new_flow", 0),
    ] {
        assert_eq!(counter(&s, name), want, "{name}: {s}");
    }
}

#[test]
fn pod_to_pod_packets_skip_the_bridge_with_forwarding_on_and_cross_it_with_forwarding_off() {
    skip_unless!(AGENT);
    let Some(node) = node() else { return };
    let ns = node.node_netns_name().to_owned();
    let pod1_ns = node.pod(1).netns_name().to_owned();
    let direct_tcp = addr(&node.pod(1).ip().to_string(), 8080);
    let direct_udp = addr(&node.pod(1).ip().to_string(), 5353);
    // Sent from the unmanaged cgroup: no socket hook (or socket redirection) takes part.
    let round = || -> (u64, u64, u64, u64) {
        let before_host = packets(&ns, "vp1");
        let before_pod = packets(&pod1_ns, "eth0");
        let r = node.tcp(Target::Outside, direct_tcp, 20).expect("tcp");
        assert_eq!(r.count("web-p1"), 20, "{r:?}");
        let r = node
            .udp_connected(Target::Outside, direct_udp, 20)
            .expect("udp");
        assert_eq!(r.count("web-p1"), 20, "{r:?}");
        let after_host = packets(&ns, "vp1");
        let after_pod = packets(&pod1_ns, "eth0");
        (
            after_host.1 - before_host.1,
            after_pod.0 - before_pod.0,
            after_host.0 - before_host.0,
            after_pod.1 - before_pod.1,
        )
    };

    let mut agent = start(&node, &[]);
    // Warm the neighbour entries (ARP crosses the bridge whatever the programs do).
    node.tcp(Target::Outside, direct_tcp, 2).expect("warm-up");
    let before = counter(&agent.status().expect("status"), "tc_veth_redirect_peer");
    let (host_tx, pod_rx, host_rx, pod_tx) = round();
    let s = agent.status().expect("status");
    eprintln!("forwarding on: vp1 tx {host_tx}, pod 1 eth0 rx {pod_rx}; vp1 rx {host_rx}, eth0 tx {pod_tx}; {s}");
    // 20 connections (≥ 3 packets each towards the server) and 20 datagrams reached pod 1 ...
    assert!(pod_rx >= 80, "pod 1 received {pod_rx}");
    // ... and none of them left the host through pod 1's veth: bpf_redirect_peer put them
    // straight into pod 1's namespace (a neighbour probe may still cross the bridge).
    assert!(
        host_tx <= 4,
        "vp1 transmitted {host_tx} packets: the bridge forwarded them"
    );
    // Both directions: pod 1's answers were redirected into pod 0 the same way.
    assert!(
        counter(&s, "tc_veth_redirect_peer") - before >= pod_rx + pod_tx - 8,
        "{s}"
    );
    agent.stop().expect("agent stops");

    // The off switch: the same traffic crosses the bridge.
    let mut agent = start(&node, &["--tc-pod-forward", "false"]);
    let before = counter(&agent.status().expect("status"), "tc_veth_redirect_peer");
    let (host_tx, pod_rx, _, _) = round();
    let s = agent.status().expect("status");
    eprintln!("forwarding off: vp1 tx {host_tx}, pod 1 eth0 rx {pod_rx}");
    assert!(pod_rx >= 80, "pod 1 received {pod_rx}");
    assert!(
        host_tx >= pod_rx - 4,
        "vp1 transmitted {host_tx} of {pod_rx}"
    );
    assert_eq!(counter(&s, "tc_veth_redirect_peer"), before, "{s}");
    agent.stop().expect("agent stops");
}

/// `IpForwDatagrams` of namespace `ns`: packets its routing forwarded.
fn forwarded(ns: &str) -> u64 {
    let snmp = run("ip", &["netns", "exec", ns, "cat", "/proc/net/snmp"]).expect("snmp");
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().expect("Ip header"), ip.next().expect("Ip values"));
    let i = names
        .split_whitespace()
        .position(|n| n == "ForwDatagrams")
        .expect("ForwDatagrams");
    values
        .split_whitespace()
        .nth(i)
        .expect("value")
        .parse()
        .expect("number")
}

/// A namespace routed through the node, standing for another node's pods, removed on drop.
struct Remote(String);

impl Drop for Remote {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.0]) {
            eprintln!("tc_veth: removing netns {}: {e:#}", self.0);
        }
    }
}

#[test]
fn replies_to_a_forwarded_network_leave_through_the_fib_not_the_host_routing() {
    skip_unless!(AGENT);
    let Some(node) = node() else { return };
    let ns = node.node_netns_name().to_owned();
    let remote = Remote(format!("{}-r", node.id().base()));
    run("ip", &["netns", "add", &remote.0]).expect("remote netns");
    let r = remote.0.as_str();
    for args in [
        vec!["-n", r, "link", "set", "lo", "up"],
        vec![
            "-n", &ns, "link", "add", "rm", "type", "veth", "peer", "name", "eth0", "netns", r,
        ],
        vec!["-n", &ns, "addr", "add", "192.168.90.1/24", "dev", "rm"],
        vec!["-n", &ns, "link", "set", "rm", "up"],
        vec!["-n", r, "addr", "add", "192.168.90.2/24", "dev", "eth0"],
        vec!["-n", r, "link", "set", "eth0", "up"],
        vec![
            "-n",
            r,
            "route",
            "add",
            "10.244.0.0/24",
            "via",
            "192.168.90.1",
        ],
    ] {
        run("ip", &args).expect("remote wiring");
    }
    let client = node
        .outside()
        .in_netns("remote", r, "192.168.90.2".parse().unwrap());
    let target = addr(&node.pod(1).ip().to_string(), 8080).to_string();
    let tcp = |n: u32| -> meshpath_tests::ClientReport {
        let v = node
            .run_client_in(
                &client,
                &["tcp", "--addr", &target, "--count", &n.to_string()],
            )
            .expect("tcp client");
        serde_json::from_value(v).expect("report")
    };
    let round = |agent: &Agent| -> (u64, u64) {
        tcp(2); // neighbours warm
        let before = (
            forwarded(&ns),
            counter(&agent.status().unwrap(), "tc_veth_redirect_neigh"),
        );
        let rep = tcp(20);
        assert_eq!(rep.count("web-p1"), 20, "{rep:?}");
        let after = (
            forwarded(&ns),
            counter(&agent.status().unwrap(), "tc_veth_redirect_neigh"),
        );
        (after.0 - before.0, after.1 - before.1)
    };

    let mut agent = start(&node, &["--tc-pod-forward-cidr", "192.168.90.0/24"]);
    let (routed_on, neigh) = round(&agent);
    agent.stop().expect("agent stops");
    let mut agent = start(&node, &["--tc-pod-forward", "false"]);
    let (routed_off, neigh_off) = round(&agent);
    agent.stop().expect("agent stops");
    eprintln!(
        "routed by the node: {routed_on} (forwarding on, {neigh} via bpf_redirect_neigh), \
         {routed_off} (off)"
    );
    // Requests towards the pod are routed by the node either way; pod 1's answers (at least
    // the SYN-ACK, data and FIN of each connection) only with forwarding off.
    assert!(neigh >= 40, "{neigh} answers through the FIB");
    assert_eq!(neigh_off, 0);
    assert!(
        routed_off >= routed_on + 40,
        "on {routed_on}, off {routed_off}"
    );
}
