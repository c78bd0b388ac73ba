//! What the benchmark measures and records: scenarios, tests, and one record per run. These are
//! serialized as-is into results.json, so field names are part of the output format.

use serde::Serialize;

/// The four data paths compared side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Direct pod IP, meshpath not loaded: the no-mesh baseline every ratio is against.
    A,
    /// ClusterIP through kube-proxy-style iptables rules in the node namespace.
    B,
    /// ClusterIP through meshpath's connect-time load balancing, socket redirection off.
    C,
    /// The same with sock_ops + sk_msg socket redirection on.
    D,
    /// (c) with the tc programs on the pods' veths: pod-to-pod packets go straight into the
    /// destination pod with `bpf_redirect_peer` instead of through the bridge (socket
    /// redirection off, so the packets are what is compared).
    E,
    /// L7 rows' baseline: direct pod IP, no proxy, nothing loaded (interleaved with the three
    /// L7 hops, so its numbers come from the same stretch of time as theirs).
    #[value(name = "l7-direct")]
    #[serde(rename = "l7-direct")]
    L7Direct,
    /// One L7 hop through meshpath's node proxy: ClusterIP steered by the kernel to the proxy.
    #[value(name = "l7-meshpath")]
    #[serde(rename = "l7-meshpath")]
    L7Meshpath,
    /// One L7 hop through nginx as a keep-alive reverse proxy in the node netns.
    #[value(name = "l7-nginx")]
    #[serde(rename = "l7-nginx")]
    L7Nginx,
    /// One L7 hop through HAProxy as a keep-alive reverse proxy in the node netns.
    #[value(name = "l7-haproxy")]
    #[serde(rename = "l7-haproxy")]
    L7Haproxy,
    /// (c) with Istio's TCP metrics off in the kernel (`--tcp-metrics false`): what sock_ops
    /// counting costs (the "Observability cost" section, against (c), where they are on).
    #[value(name = "c-tcpm-off")]
    #[serde(rename = "c-tcpm-off")]
    CTcpMetricsOff,
    /// l7-meshpath exporting spans to a real Jaeger, 1 % of new traces sampled.
    #[value(name = "l7-trace1")]
    #[serde(rename = "l7-trace1")]
    L7Trace1,
    /// l7-meshpath exporting spans to a real Jaeger, every request sampled.
    #[value(name = "l7-trace100")]
    #[serde(rename = "l7-trace100")]
    L7Trace100,
    /// Cross-node rows (two nodes, see xnode.rs): an outside client to the node-2 pod's own
    /// address, routed via node 1 both ways, nothing translated (the NodePort rows' baseline).
    #[value(name = "x-a")]
    #[serde(rename = "x-a")]
    XDirect,
    /// The outside client to a NodePort on node 1, kube-proxy-style iptables DNAT + MASQUERADE
    /// to the pod on node 2.
    #[value(name = "x-b")]
    #[serde(rename = "x-b")]
    XNodePortIptables,
    /// The same NodePort through meshpath's tc path on node 1's uplink (Cluster policy, SNAT).
    #[value(name = "x-c")]
    #[serde(rename = "x-c")]
    XNodePortMeshpath,
    /// A pod on node 1 to the node-2 pod's address, nothing loaded (the ClusterIP rows' baseline).
    #[value(name = "x-pod")]
    #[serde(rename = "x-pod")]
    XPodDirect,
    /// The node-1 pod to a ClusterIP whose endpoint is on node 2, iptables DNAT in node 1.
    #[value(name = "x-cip-ipt")]
    #[serde(rename = "x-cip-ipt")]
    XClusterIpIptables,
    /// The same ClusterIP through meshpath's connect-time LB (the agent as in x-c).
    #[value(name = "x-cip-mp")]
    #[serde(rename = "x-cip-mp")]
    XClusterIpMeshpath,
    /// x-cip-mp with the agent's tc uplink programs off: what they cost traffic that only
    /// passes the uplink (not in the `xnode` group; name it).
    #[value(name = "x-cip-mp-notc")]
    #[serde(rename = "x-cip-mp-notc")]
    XClusterIpMeshpathNoTc,
}

/// The kernel-path comparison (the main table).
pub const CORE: [Scenario; 5] = [
    Scenario::A,
    Scenario::B,
    Scenario::C,
    Scenario::D,
    Scenario::E,
];
/// The L7-hop comparison (its own section, ratios against [`Scenario::L7Direct`]).
pub const L7: [Scenario; 4] = [
    Scenario::L7Direct,
    Scenario::L7Meshpath,
    Scenario::L7Nginx,
    Scenario::L7Haproxy,
];

/// The observability-cost comparison: each measured variant beside the default it changes.
pub const OBS: [Scenario; 5] = [
    Scenario::C,
    Scenario::CTcpMetricsOff,
    Scenario::L7Meshpath,
    Scenario::L7Trace1,
    Scenario::L7Trace100,
];

impl Scenario {
    pub fn key(self) -> &'static str {
        match self {
            Scenario::A => "a",
            Scenario::B => "b",
            Scenario::C => "c",
            Scenario::D => "d",
            Scenario::E => "e",
            Scenario::L7Direct => "l7-direct",
            Scenario::L7Meshpath => "l7-meshpath",
            Scenario::L7Nginx => "l7-nginx",
            Scenario::L7Haproxy => "l7-haproxy",
            Scenario::CTcpMetricsOff => "c-tcpm-off",
            Scenario::L7Trace1 => "l7-trace1",
            Scenario::L7Trace100 => "l7-trace100",
            Scenario::XDirect => "x-a",
            Scenario::XNodePortIptables => "x-b",
            Scenario::XNodePortMeshpath => "x-c",
            Scenario::XPodDirect => "x-pod",
            Scenario::XClusterIpIptables => "x-cip-ipt",
            Scenario::XClusterIpMeshpath => "x-cip-mp",
            Scenario::XClusterIpMeshpathNoTc => "x-cip-mp-notc",
        }
    }

    /// Run by xnode.rs on the two-node topology; reported in xnode.md only.
    pub fn is_xnode(self) -> bool {
        XNODE.contains(&self) || self == Scenario::XClusterIpMeshpathNoTc
    }

    /// Run by l7.rs (an HTTP hop in front of the backend).
    pub fn is_l7(self) -> bool {
        L7.contains(&self) || matches!(self, Scenario::L7Trace1 | Scenario::L7Trace100)
    }

    /// Only in the "Observability cost" section (not in the kernel-path or L7-hop tables).
    pub fn is_obs_only(self) -> bool {
        matches!(
            self,
            Scenario::CTcpMetricsOff | Scenario::L7Trace1 | Scenario::L7Trace100
        )
    }

    /// The trace sampling percentage and collector use of an L7 meshpath scenario.
    pub fn trace_sampling(self) -> Option<u32> {
        match self {
            Scenario::L7Trace1 => Some(1),
            Scenario::L7Trace100 => Some(100),
            _ => None,
        }
    }

    /// Short column header.
    pub fn short(self) -> &'static str {
        match self {
            Scenario::A => "(a) direct",
            Scenario::B => "(b) iptables",
            Scenario::C => "(c) meshpath LB",
            Scenario::D => "(d) meshpath LB+redirect",
            Scenario::E => "(e) meshpath LB+redirect_peer",
            Scenario::L7Direct => "direct",
            Scenario::L7Meshpath => "meshpath proxy",
            Scenario::L7Nginx => "nginx",
            Scenario::L7Haproxy => "HAProxy",
            Scenario::CTcpMetricsOff => "(c) TCP metrics off",
            Scenario::L7Trace1 => "meshpath proxy, tracing 1 %",
            Scenario::L7Trace100 => "meshpath proxy, tracing 100 %",
            Scenario::XDirect => "(x-a) pod IP via node 1",
            Scenario::XNodePortIptables => "(x-b) NodePort, iptables",
            Scenario::XNodePortMeshpath => "(x-c) NodePort, meshpath tc",
            Scenario::XPodDirect => "(x-pod) pod → pod IP",
            Scenario::XClusterIpIptables => "(x-cip-ipt) ClusterIP, iptables",
            Scenario::XClusterIpMeshpath => "(x-cip-mp) ClusterIP, meshpath",
            Scenario::XClusterIpMeshpathNoTc => "(x-cip-mp-notc) ClusterIP, meshpath, no tc",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Scenario::A => "direct pod IP, meshpath not loaded (no-mesh baseline)",
            Scenario::B => {
                "ClusterIP via kube-proxy-style iptables nat rules (KUBE-SERVICES → KUBE-SVC → \
                 KUBE-SEP DNAT) in the node netns, conntrack + br_netfilter for the replies"
            }
            Scenario::C => {
                "ClusterIP via meshpath connect-time LB (cgroup connect4), socket redirection off"
            }
            Scenario::D => {
                "ClusterIP via meshpath connect-time LB with sock_ops + sk_msg socket redirection \
                 (--socket-redirect true)"
            }
            Scenario::E => {
                "as (c), with the tc programs on the pods' veths (--tc-pod-veths true): packets \
                 between the pods skip the bridge and netfilter via bpf_redirect_peer"
            }
            Scenario::L7Direct => {
                "direct pod IP, no proxy, meshpath not loaded (the L7 rows' baseline)"
            }
            Scenario::L7Meshpath => {
                "ClusterIP of a Service with a VirtualService http route: the kernel steers the \
                 connect to meshpath's node proxy on 10.244.0.1:151xx (node netns; 2 worker \
                 threads), which forwards over keep-alive upstream connections"
            }
            Scenario::L7Nginx => {
                "nginx reverse proxy on 10.244.0.1 in the node netns (worker_processes 2, \
                 upstream keepalive 64, HTTP/1.1 upstream), meshpath not loaded"
            }
            Scenario::L7Haproxy => {
                "HAProxy reverse proxy on 10.244.0.1 in the node netns (mode http, nbthread 2, \
                 http-reuse always), meshpath not loaded"
            }
            Scenario::CTcpMetricsOff => {
                "as (c), with Istio's TCP metrics off in the kernel (--tcp-metrics false; (c) \
                 runs with the default, on)"
            }
            Scenario::L7Trace1 => {
                "as l7-meshpath, spans exported as Zipkin v2 JSON to a real Jaeger (all-in-one, \
                 in memory, on loopback), --trace-sampling 1"
            }
            Scenario::L7Trace100 => {
                "as l7-meshpath, spans exported as Zipkin v2 JSON to a real Jaeger (all-in-one, \
                 in memory, on loopback), --trace-sampling 100"
            }
            Scenario::XDirect => {
                "outside client → the node-2 pod's own address 10.244.2.10, routed via node 1 in \
                 both directions (node 2 routes the client's address back via node 1), nothing \
                 translated, meshpath not loaded"
            }
            Scenario::XNodePortIptables => {
                "outside client → NodePort on node 1's uplink address; kube-proxy-style nat rules \
                 in node 1 (KUBE-SERVICES → KUBE-NODEPORTS → KUBE-EXT (mark) → KUBE-SVC → \
                 KUBE-SEP DNAT to 10.244.2.10, MASQUERADE --random-fully to node 1's address)"
            }
            Scenario::XNodePortMeshpath => {
                "the same NodePort through meshpath's tc programs on node 1's uplink \
                 (--tc-uplink, externalTrafficPolicy Cluster: DNAT + SNAT to node 1's address, \
                 forwarded with a FIB lookup and bpf_redirect, no netfilter rule anywhere)"
            }
            Scenario::XPodDirect => {
                "pod on node 1 (own address 10.244.1.10) → the node-2 pod's address, meshpath \
                 not loaded"
            }
            Scenario::XClusterIpIptables => {
                "the node-1 pod → ClusterIP, kube-proxy-style DNAT in node 1's PREROUTING to \
                 10.244.2.10 (source in the cluster CIDR: not masqueraded)"
            }
            Scenario::XClusterIpMeshpath => {
                "the node-1 pod → ClusterIP through meshpath's connect-time LB (cgroup \
                 connect4), the agent started as for x-c (tc uplink on, socket redirection off)"
            }
            Scenario::XClusterIpMeshpathNoTc => {
                "as x-cip-mp with the tc uplink programs off (no --tc-uplink): the same \
                 connect-time LB, nothing attached to node 1's uplink"
            }
        }
    }
}

/// The cross-node comparison (its own report, xnode.md): NodePort rows first, then ClusterIP.
pub const XNODE: [Scenario; 6] = [
    Scenario::XDirect,
    Scenario::XNodePortIptables,
    Scenario::XNodePortMeshpath,
    Scenario::XPodDirect,
    Scenario::XClusterIpIptables,
    Scenario::XClusterIpMeshpath,
];

/// Scenarios named by one `--scenarios` item (a group names several).
#[derive(Clone, Debug)]
pub struct Picks(pub Vec<Scenario>);

pub fn parse_picks(s: &str) -> Result<Picks, String> {
    use clap::ValueEnum;
    let v = match s.trim() {
        "core" => CORE.to_vec(),
        "l7" => L7.to_vec(),
        "all" => CORE.iter().chain(&L7).copied().collect(),
        "obs" => OBS.to_vec(),
        "xnode" => XNODE.to_vec(),
        one => vec![Scenario::from_str(one, true).map_err(|_| {
            format!(
                "unknown scenario {one:?} (a, b, c, d, e, l7-direct, l7-meshpath, l7-nginx, \
                 l7-haproxy, c-tcpm-off, l7-trace1, l7-trace100, x-a, x-b, x-c, x-pod, \
                 x-cip-ipt, x-cip-mp, x-cip-mp-notc, or a group: core, l7, obs, xnode, all)"
            )
        })?],
    };
    Ok(Picks(v))
}

/// The kinds of measurement run in every scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// fortio at a fixed 1000 qps: latency percentiles.
    Latency,
    /// fortio with -qps 0: throughput in requests per second.
    MaxQps,
    /// One bulk TCP stream: bytes per second.
    Stream,
}

/// The fixed request rate of the latency runs.
pub const LATENCY_QPS: u32 = 1000;
/// Connection counts of the latency runs.
pub const LATENCY_CONNS: [u32; 4] = [1, 4, 16, 64];
/// Connection counts of the max-qps runs.
pub const MAXQPS_CONNS: [u32; 3] = [1, 16, 64];

/// One measurement run. Values are `None` when the run failed (`error` says why).
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub repeat: u32,
    pub scenario: Scenario,
    pub test: Test,
    /// fortio `-c` (1 for the stream).
    pub connections: u32,
    pub p50_us: Option<f64>,
    pub p90_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// Achieved requests per second (latency runs: should be ~1000).
    pub qps: Option<f64>,
    pub bytes_per_sec: Option<f64>,
    /// Requests answered 200 / anything else (fortio runs).
    pub ok_requests: u64,
    pub failed_requests: u64,
    pub error: Option<String>,
    /// The tool's own JSON output (fortio's minus its payload; mp-testpod stream's report).
    pub raw: serde_json::Value,
    /// L7 hops: the proxy process's CPU and memory during this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyUsage>,
}

/// What the proxy process(es) of an L7 hop used during one fortio run.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyUsage {
    /// utime + stime over the run, all of the proxy's processes and threads, in seconds.
    pub cpu_s: f64,
    /// Requests fortio made in the run (the CPU is divided by these).
    pub requests: u64,
    /// CPU per request × 1000 × 100: % of one core at 1000 requests/s.
    pub cpu_pct_per_1000_rps: Option<f64>,
    /// Largest VmRSS (sum over the proxy's processes) sampled during the run, KiB.
    pub rss_peak_kib: u64,
    /// TCP connections the backend pod accepted during the run: the proxy's new upstream
    /// connections (keep-alive working: few; None if unreadable).
    pub upstream_opens: Option<u64>,
}

impl RunRecord {
    pub fn new(repeat: u32, scenario: Scenario, test: Test, connections: u32) -> RunRecord {
        RunRecord {
            repeat,
            scenario,
            test,
            connections,
            p50_us: None,
            p90_us: None,
            p99_us: None,
            qps: None,
            bytes_per_sec: None,
            ok_requests: 0,
            failed_requests: 0,
            error: None,
            raw: serde_json::Value::Null,
            proxy: None,
        }
    }
}
