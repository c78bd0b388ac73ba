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
}

impl Scenario {
    pub fn key(self) -> &'static str {
        match self {
            Scenario::A => "a",
            Scenario::B => "b",
            Scenario::C => "c",
            Scenario::D => "d",
        }
    }

    /// Short column header.
    pub fn short(self) -> &'static str {
        match self {
            Scenario::A => "(a) direct",
            Scenario::B => "(b) iptables",
            Scenario::C => "(c) meshpath LB",
            Scenario::D => "(d) meshpath LB+redirect",
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
        }
    }
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
        }
    }
}
