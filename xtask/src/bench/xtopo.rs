//! The cross-node rows' topology: the two-node layout of the tc_nodeport tests, with routed
//! addresses of their own for the client pod on node 1 and the server pod on node 2 (both
//! harness nodes number their pods alike, 10.244.0.0/24).
//!
//! ```text
//!   lan netns   mpt-<id>-lan: bridge lanbr, ports l1, l2, lc
//!   node 1      ul 192.168.77.1/24; pod 0 (client pod) also 10.244.1.10, routes 10.244.2.0/24 via node 2
//!   node 2      ul 192.168.77.2/24; pod 0 (fortio server) also 10.244.2.10, routes 10.244.1.0/24
//!               and the outside client via node 1
//!   client      mpt-<id>-c: eth0 192.168.77.100/24, routes 10.244.2.0/24 via node 1
//! ```
//!
//! Every packet between the client (pod or outside) and the server crosses node 1 and node 2 in
//! both directions in every row, so the rows differ only in the translation. Node 1 sends no ICMP
//! redirects: the outside client's pod-IP traffic enters and leaves node 1 on the same uplink,
//! and a redirect would teach the client a shortcut straight to node 2.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use meshpath_tests::{Node, Pod};

use super::proc;

pub const NODE1_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
pub const NODE2_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
/// The server pod on node 2, as the cluster knows it.
pub const SERVER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
/// The client pod on node 1, as the cluster knows it.
pub const CLIENT_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
/// The harness's bridge address on every node: each pod's default gateway.
const POD_GATEWAY: &str = "10.244.0.1";

/// Both nodes and the outside namespaces of one scenario instance. Dropping it (also on an
/// error or panic) removes the lan and client namespaces, then the nodes remove their own.
pub struct TwoNodes {
    lan: String,
    client_ns: String,
    pub node1: Node,
    pub node2: Node,
    /// The outside client: a pseudo-pod of node 1 (its unmanaged cgroup) in the client netns.
    pub client: Pod,
}

fn ip(args: &[&str]) -> Result<()> {
    proc::output("ip", args).map(drop)
}

fn sysctl(ns: &str, settings: &[&str]) -> Result<()> {
    let mut args = vec!["netns", "exec", ns, "sysctl", "-qw"];
    args.extend(settings);
    proc::output("ip", &args).map(drop)
}

/// A pod answers on, and sends from, `addr` as well as its harness address; its node sends
/// `addr` down the bridge.
fn own_address(node: &Node, pod: &Pod, addr: Ipv4Addr) -> Result<()> {
    let host = format!("{addr}/32");
    let src = addr.to_string();
    let ns = pod.netns_name();
    ip(&["-n", ns, "addr", "add", &host, "dev", "eth0"])?;
    ip(&[
        "-n",
        ns,
        "route",
        "replace",
        "default",
        "via",
        POD_GATEWAY,
        "dev",
        "eth0",
        "src",
        &src,
    ])?;
    ip(&[
        "-n",
        node.node_netns_name(),
        "route",
        "add",
        &host,
        "dev",
        "br0",
    ])
}

impl TwoNodes {
    pub fn build() -> Result<TwoNodes> {
        let node1 = Node::new(1).context("creating node 1")?;
        let node2 = Node::new(1).context("creating node 2")?;
        let base = node1.id().base();
        let (lan, client_ns) = (format!("{base}-lan"), format!("{base}-c"));
        let client = node1.outside().in_netns("client", &client_ns, CLIENT_IP);
        let t = TwoNodes {
            lan,
            client_ns,
            node1,
            node2,
            client,
        };
        // From here on an error drops `t`, which removes what was made so far.
        t.wire().context("wiring the two-node topology")?;
        Ok(t)
    }

    fn wire(&self) -> Result<()> {
        let lan = self.lan.as_str();
        for ns in [lan, &self.client_ns] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&["-n", lan, "link", "add", "lanbr", "type", "bridge"])?;
        ip(&["-n", lan, "link", "set", "lanbr", "up"])?;
        let ports = [
            ("l1", self.node1.node_netns_name(), "ul", NODE1_IP),
            ("l2", self.node2.node_netns_name(), "ul", NODE2_IP),
            ("lc", self.client_ns.as_str(), "eth0", CLIENT_IP),
        ];
        for (lan_side, ns, name, addr) in ports {
            ip(&[
                "-n", lan, "link", "add", lan_side, "type", "veth", "peer", "name", name, "netns",
                ns,
            ])?;
            ip(&["-n", lan, "link", "set", lan_side, "master", "lanbr", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", name])?;
            ip(&["-n", ns, "link", "set", name, "up"])?;
        }
        let (n1, n2) = (self.node1.node_netns_name(), self.node2.node_netns_name());
        for ns in [n1, n2] {
            // Forwarding between uplink and pods; bridge-nf-call-iptables on as in the
            // same-node bench (and as kube-proxy requires with a bridge CNI).
            sysctl(
                ns,
                &[
                    "net.ipv4.ip_forward=1",
                    "net.bridge.bridge-nf-call-iptables=1",
                ],
            )?;
        }
        sysctl(
            n1,
            &[
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.ul.send_redirects=0",
            ],
        )?;
        own_address(&self.node1, self.node1.pod(0), CLIENT_POD)?;
        own_address(&self.node2, self.node2.pod(0), SERVER_POD)?;
        let (via1, via2) = (NODE1_IP.to_string(), NODE2_IP.to_string());
        ip(&["-n", n1, "route", "add", "10.244.2.0/24", "via", &via2])?;
        ip(&["-n", n2, "route", "add", "10.244.1.0/24", "via", &via1])?;
        let client_host = format!("{CLIENT_IP}/32");
        ip(&["-n", n2, "route", "add", &client_host, "via", &via1])?;
        ip(&[
            "-n",
            &self.client_ns,
            "route",
            "add",
            "10.244.2.0/24",
            "via",
            &via1,
        ])
    }

    /// The server pod with its cluster address (what the fortio server binds to with
    /// `--fortio-listen pod-ip`).
    pub fn server(&self) -> Pod {
        let p = self.node2.pod(0);
        p.in_netns(p.label(), p.netns_name(), SERVER_POD)
    }

    /// The client pod on node 1.
    pub fn client_pod(&self) -> &Pod {
        self.node1.pod(0)
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.lan] {
            if std::path::Path::new("/var/run/netns").join(ns).exists() {
                if let Err(e) = ip(&["netns", "del", ns]) {
                    eprintln!("bench: removing netns {ns}: {e:#}");
                }
            }
        }
    }
}
