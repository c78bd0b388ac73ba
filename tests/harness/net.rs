//! Network namespaces and the node's bridge network.
//!
//! Layout (all inside namespaces of this run, nothing in the root namespace):
//!
//! ```text
//!   node netns  mpt-<id>-n:   lo up, br0 10.244.0.1/24, vp0 .. vpN-1 enslaved to br0
//!   pod netns   mpt-<id>-p<i>: lo up, eth0 10.244.0.(10+i)/24, default via 10.244.0.1
//! ```
//!
//! Every address lives in a private namespace, so the fixed 10.244.0.0/24 range cannot collide
//! with another run or with the machine's own networking.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::sys::{ip, NETNS_ADD_LOCK};

/// Address of the node's bridge; the pods' default gateway.
pub(crate) const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// Prefix length of the pod network.
const PREFIX_LEN: u8 = 24;
/// Pod `i` gets 10.244.0.(FIRST_POD_HOST + i).
const FIRST_POD_HOST: u8 = 10;
/// Highest pod count that fits the /24 (hosts .10 ..= .254).
pub(crate) const MAX_PODS: usize = 245;

/// The address of pod `i`. The caller has checked `i < MAX_PODS`.
pub(crate) fn pod_ip(i: usize) -> Ipv4Addr {
    let host = FIRST_POD_HOST + u8::try_from(i).expect("pod index checked against MAX_PODS");
    Ipv4Addr::new(10, 244, 0, host)
}

/// The file `ip netns` binds a named namespace to; `setns()` on it enters the namespace.
pub(crate) fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// `ip netns add NAME` and bring `lo` up inside.
pub(crate) fn add_netns(name: &str) -> Result<()> {
    {
        let _g = NETNS_ADD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        ip(&["netns", "add", name])?;
    }
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// `ip netns del NAME`. The namespace itself (and the veths and bridge inside) disappears once no
/// process uses it any more, which is why processes are killed before this is called.
pub(crate) fn del_netns(name: &str) -> Result<()> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name])
}

/// Names of all named network namespaces (entries of /var/run/netns).
pub(crate) fn list_netns() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The bridge's own MAC address (locally administered). Without one set, Linux gives a bridge
/// the lowest MAC of its ports and changes it as pods come and go: the pods' neighbour entries
/// for the gateway (the node proxy's and DNS listeners' address) then point at a MAC nobody
/// answers for until they expire, 15-45 s of lost packets.
pub const BRIDGE_MAC: &str = "02:00:0a:f4:00:01";

/// Create the bridge `br0` with the gateway address in the node namespace.
pub(crate) fn setup_bridge(node_ns: &str) -> Result<()> {
    let cidr = format!("{BRIDGE_IP}/{PREFIX_LEN}");
    ip(&[
        "-n", node_ns, "link", "add", "br0", "address", BRIDGE_MAC, "type", "bridge",
    ])?;
    ip(&["-n", node_ns, "addr", "add", &cidr, "dev", "br0"])?;
    ip(&["-n", node_ns, "link", "set", "br0", "up"])
}

/// Wire pod `i` (namespace `pod_ns`, already created) to the bridge of `node_ns`.
pub(crate) fn setup_pod(node_ns: &str, pod_ns: &str, i: usize) -> Result<()> {
    let host_side = format!("vp{i}");
    let cidr = format!("{}/{PREFIX_LEN}", pod_ip(i));
    let gw = BRIDGE_IP.to_string();
    // Run inside the node namespace (`ip -n`) and create the peer directly in the pod namespace,
    // so the pair never exists in the root namespace, where names could collide between runs.
    ip(&[
        "-n", node_ns, "link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns",
        pod_ns,
    ])
    .with_context(|| format!("creating veth for pod {i}"))?;
    ip(&[
        "-n", node_ns, "link", "set", &host_side, "master", "br0", "up",
    ])?;
    ip(&["-n", pod_ns, "addr", "add", &cidr, "dev", "eth0"])?;
    ip(&["-n", pod_ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", pod_ns, "route", "add", "default", "via", &gw])
}
