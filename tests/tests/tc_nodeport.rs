//! The tc path against the real kernel, on a two-node topology: an outside client reaches a
//! NodePort Service (and an external IP of it) on node 1 whose backend pod runs on node 1, over
//! TCP and UDP, through the
//! tc programs on node 1's uplink, with no iptables or nftables rule anywhere; with the
//! programs detached the same requests fail (negative control).
//!
//! ```text
//!   lan netns   mpt-<id>-lan: bridge lanbr, ports l1, l2, lc
//!   node 1      <harness node>: ul 192.168.77.1/24 (uplink, on the lan), br0 + pods 10.244.0.0/24
//!   node 2      <harness node>: ul 192.168.77.2/24 (uplink, on the lan), br0 + pods 10.244.0.0/24
//!   client      mpt-<id>-c: eth0 192.168.77.100/24 (on the lan) — "the internet"
//! ```
//!
//! `remote`: NodePorts over node 2's endpoints (SNAT), `Local` policy, refusals, and flows whose
//! backend leaves. `maxconn`: NodePort flows against a DestinationRule's `maxConnections`.
//! `sockmap`: socket redirection on both nodes never hands bytes from one node to the other.

#[path = "tc_nodeport/maxconn.rs"]
mod maxconn;
#[path = "tc_nodeport/remote.rs"]
mod remote;
#[path = "tc_nodeport/sockmap.rs"]
mod sockmap;

use std::io::Write;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Result;
use meshpath_tests::agent::counter;
use meshpath_tests::manifests::{docs, endpoint_slice, Ep};
use meshpath_tests::{
    addr, kernel_at_least, netns_exec, run_checked as run, skip_unless, wait_until, Node, Proxy,
    Source, AGENT,
};

const NODE1_IP: &str = "192.168.77.1";
const NODE2_IP: &str = "192.168.77.2";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
const NODE_PORT_TCP: u16 = 30080;
const NODE_PORT_UDP: u16 = 30053;
/// `externalIPs` of the TCP Service: not an address of any node; the client routes it via node 1.
const EXTERNAL_IP: &str = "192.168.78.50";

/// The lan and client namespaces of one run, removed on drop (also while a failing test
/// unwinds); the harness's nodes remove their own.
struct Outside {
    lan: String,
    client: String,
}

impl Outside {
    fn build(base: &str, nodes: &[(&Node, &str)]) -> Result<Outside> {
        let out = Outside {
            lan: format!("{base}-lan"),
            client: format!("{base}-c"),
        };
        for ns in [&out.lan, &out.client] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let lan = out.lan.as_str();
        ip(&["-n", lan, "link", "add", "lanbr", "type", "bridge"])?;
        ip(&["-n", lan, "link", "set", "lanbr", "up"])?;
        let mut ports: Vec<(String, String, String, &str)> = nodes
            .iter()
            .enumerate()
            .map(|(i, (node, ip))| {
                let ns = node.node_netns_name().to_owned();
                (format!("l{}", i + 1), ns, "ul".to_owned(), *ip)
            })
            .collect();
        ports.push((
            "lc".into(),
            out.client.clone(),
            "eth0".into(),
            "192.168.77.100",
        ));
        for (lan_side, ns, name, addr) in &ports {
            ip(&[
                "-n", lan, "link", "add", lan_side, "type", "veth", "peer", "name", name, "netns",
                ns,
            ])?;
            ip(&["-n", lan, "link", "set", lan_side, "master", "lanbr", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", name])?;
            ip(&["-n", ns, "link", "set", name, "up"])?;
        }
        // "The internet" reaches the external IP through node 1, as a router would send it.
        let via = nodes[0].1;
        ip(&[
            "-n",
            &out.client,
            "route",
            "add",
            &format!("{EXTERNAL_IP}/32"),
            "via",
            via,
        ])?;
        for (node, _) in nodes {
            // The node routes between its uplink and its pods' bridge.
            netns_exec(
                node.node_netns_name(),
                &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            )?;
        }
        Ok(out)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for ns in [&self.client, &self.lan] {
            if std::path::Path::new("/var/run/netns").join(ns).exists() {
                if let Err(e) = ip(&["netns", "del", ns]) {
                    eprintln!("tc_nodeport: removing netns {ns}: {e:#}");
                }
            }
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(drop)
}

/// A NodePort Service (TCP and UDP ports) whose one endpoint is pod 0 of node 1.
fn manifest(backend: Ipv4Addr) -> String {
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  \
         type: NodePort\n  clusterIP: 10.96.0.10\n  externalTrafficPolicy: Local\n  \
         externalIPs: [\"{EXTERNAL_IP}\"]\n  ports:\n  \
         - name: p\n    port: 80\n    targetPort: 8080\n    protocol: TCP\n    nodePort: {NODE_PORT_TCP}\n  \
         selector:\n    app: web\n"
    );
    let dns = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: dns\n  namespace: default\nspec:\n  \
         type: NodePort\n  clusterIP: 10.96.0.53\n  ports:\n  \
         - name: p\n    port: 53\n    targetPort: 5353\n    protocol: UDP\n    nodePort: {NODE_PORT_UDP}\n  \
         selector:\n    app: dns\n"
    );
    docs(&[
        service,
        endpoint_slice("web", 8080, "TCP", &[Ep::ready(backend)]),
        dns,
        endpoint_slice("dns", 5353, "UDP", &[Ep::ready(backend)]),
    ])
}

/// Whether TCX links can be made here (Linux ≥ 6.6).
fn tcx_supported() -> bool {
    kernel_at_least(6, 6)
}

/// No packet filter rule in `ns`: whatever translated the packets, it was not netfilter.
fn assert_no_netfilter_rules(ns: &str) {
    let rules = netns_exec(ns, &["iptables-save"]).unwrap_or_default();
    let real: Vec<&str> = rules
        .lines()
        .filter(|l| l.starts_with("-A") || l.starts_with("-I"))
        .collect();
    assert!(real.is_empty(), "iptables rules in {ns}: {real:?}");
    if let Ok(nft) = netns_exec(ns, &["nft", "list", "ruleset"]) {
        assert!(nft.trim().is_empty(), "nftables rules in {ns}: {nft}");
    }
    // And no connection tracked by netfilter: the namespace's conntrack table (what
    // `conntrack -L` lists) is empty, so no NAT of the kernel's own saw these flows.
    // Missing when the kernel has no nf_conntrack: then nothing could have tracked them.
    if let Ok(table) = netns_exec(ns, &["cat", "/proc/net/nf_conntrack"]) {
        assert!(
            table.trim().is_empty(),
            "netfilter conntrack entries in {ns}: {table}"
        );
    }
}

#[test]
fn outside_client_reaches_a_node_port_with_a_local_backend_through_the_tc_path() {
    skip_unless!(AGENT);
    // Before Linux 6.6 the agent falls back to clsact filters: the same test, detached with tc.
    let tcx = tcx_supported();
    let node1 = Node::new(1).expect("node 1");
    let node2 = Node::new(1).expect("node 2");
    let outside = Outside::build(
        &node1.id().base(),
        &[(&node1, NODE1_IP), (&node2, NODE2_IP)],
    )
    .expect("lan, uplinks and client");
    if !tcx {
        // The fallback needs the clsact qdisc (sch_ingress), a module on some kernels.
        let ns = node1.node_netns_name();
        if netns_exec(ns, &["tc", "qdisc", "add", "dev", "ul", "clsact"]).is_err() {
            let test = std::thread::current()
                .name()
                .unwrap_or("tc_nodeport")
                .to_owned();
            let reason = "no TCX (Linux 6.6+) and no clsact qdisc on this kernel";
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                meshpath_tests::skip_line(&test, reason)
            );
            return;
        }
        netns_exec(ns, &["tc", "qdisc", "del", "dev", "ul", "clsact"]).expect("tc qdisc del");
    }
    node1
        .spawn_server(0, "web-n1", &[8080], &[5353], &[])
        .expect("server on node 1");
    let dir = node1
        .write_manifests(&[("web.yaml", manifest(node1.pod(0).ip()))])
        .expect("manifests");
    let netns = format!("/var/run/netns/{}", node1.node_netns_name());
    let mut agent = node1
        .start_agent(
            Source::Manifests(&dir),
            Proxy::Off,
            &["--tc-uplink", "ul", "--tc-uplink-netns", &netns],
        )
        .expect("agent on node 1");
    agent
        .wait_log("tc path attached", Duration::from_secs(10))
        .expect("tc programs attached");
    let mode = if tcx { "tcx" } else { "clsact" };
    let log = agent.log();
    assert!(
        log.contains(&format!("mode=\"{mode}\"")) || log.contains(&format!("mode={mode}")),
        "{log}"
    );

    let client = node1
        .outside()
        .in_netns("client", &outside.client, CLIENT_IP);
    let tcp = |n: u32| -> Result<meshpath_tests::ClientReport> {
        let a = addr(NODE1_IP, NODE_PORT_TCP).to_string();
        let v = node1.run_client_in(&client, &["tcp", "--addr", &a, "--count", &n.to_string()])?;
        Ok(serde_json::from_value(v)?)
    };
    let udp = |n: u32| -> Result<meshpath_tests::ClientReport> {
        let a = addr(NODE1_IP, NODE_PORT_UDP).to_string();
        let v = node1.run_client_in(
            &client,
            &["udp-connected", "--addr", &a, "--count", &n.to_string()],
        )?;
        Ok(serde_json::from_value(v)?)
    };

    // TCP: a SYN-ACK with the pod's address would be answered with RST by the client, and a
    // connected UDP socket drops a datagram from another source: success proves the replies
    // were translated back, too.
    let r = tcp(20).expect("tcp client");
    assert_eq!(r.count("web-n1"), 20, "{r:?}");
    let r = udp(20).expect("udp client");
    assert_eq!(r.count("web-n1"), 20, "{r:?}");
    // The same TCP Service on its external IP, port 80.
    let a = addr(EXTERNAL_IP, 80).to_string();
    let v = node1
        .run_client_in(&client, &["tcp", "--addr", &a, "--count", "10"])
        .expect("tcp client to the external IP");
    let r: meshpath_tests::ClientReport = serde_json::from_value(v).expect("report");
    assert_eq!(r.count("web-n1"), 10, "{r:?}");
    assert_eq!(r.first_peer.as_deref(), Some("192.168.78.50:80"));

    let s = agent.status().expect("status");
    // 30 TCP connections + 20 UDP sockets, one tracked flow each.
    assert!(counter(&s, "tc_new_flow") >= 50, "{s}");
    assert!(counter(&s, "tc_reply_reversed") >= 50, "{s}");
    assert!(counter(&s, "tc_flow_translated") >= 50, "{s}");
    for failure in [
        "tc_no_backend",
        "tc_slot_missing",
        "tc_ct_update_failed",
        "tc_rewrite_failed",
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

    // The links are pinned: the path keeps serving with the agent stopped.
    agent.stop().expect("agent stops");
    let r = tcp(5).expect("tcp client, agent stopped");
    assert_eq!(r.count("web-n1"), 5, "{r:?}");

    // Negative control: with the programs detached nothing else answers on the NodePort.
    if tcx {
        for prog in ["mp_tc_ingress", "mp_tc_egress"] {
            std::fs::remove_file(node1.pin_dir().join("links").join(prog)).expect("unpin tc link");
        }
    } else {
        for dir in ["ingress", "egress"] {
            netns_exec(
                node1.node_netns_name(),
                &["tc", "filter", "del", "dev", "ul", dir],
            )
            .expect("tc filter del");
        }
    }
    // The kernel drops an unpinned link after an RCU grace period, not at unlink(): wait for
    // the first refused connect, then require every later one to fail too.
    assert!(
        wait_until(Duration::from_secs(5), || tcp(1).is_ok_and(|r| r.ok() == 0)),
        "the NodePort still answers after the tc links were unpinned"
    );
    let r = tcp(5).expect("tcp client, detached");
    assert_eq!(r.ok(), 0, "{r:?}");
    let r = udp(5).expect("udp client, detached");
    assert_eq!(r.ok(), 0, "{r:?}");
}
