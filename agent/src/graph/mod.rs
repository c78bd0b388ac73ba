//! The live service graph behind `/ui` and `meshpath top`, drawn as Kiali draws the mesh:
//! workloads and services as nodes, edges with requests/s, error rate and p99 for HTTP, and
//! connections/s and bytes/s for TCP on the kernel path. Computed here from the Istio metrics'
//! text (the same series `/metrics` serves, read through [`prom`]), so the page and the terminal
//! only display it. Pure: no I/O, time comes in as arguments.

mod compute;
mod history;
pub mod prom;
mod sample;

use serde::{Deserialize, Serialize};

pub use history::{History, DEFAULT_WINDOW, MAX_WINDOW};
pub use sample::Sample;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Workload,
    Service,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
}

/// A graph node: `workload:<namespace>/<name>` or `service:<namespace>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId {
    pub kind: NodeKind,
    pub namespace: String,
    pub name: String,
}

impl NodeId {
    pub fn workload(namespace: &str, name: &str) -> NodeId {
        NodeId {
            kind: NodeKind::Workload,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn service(namespace: &str, name: &str) -> NodeId {
        NodeId {
            kind: NodeKind::Service,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            NodeKind::Workload => "workload",
            NodeKind::Service => "service",
        };
        write!(f, "{kind}:{}/{}", self.namespace, self.name)
    }
}

/// What `/ui/graph.json` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Seconds the rates are measured over; `None` before a second sample exists.
    pub window_s: Option<f64>,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// As [`NodeId`]'s `Display`.
    pub id: String,
    pub kind: NodeKind,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub source: String,
    pub target: String,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// Totals since the agent started, and rates over the window (`None` without one, or for an
/// error rate or p99 when the window saw no request).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "protocol", rename_all = "lowercase")]
pub enum Traffic {
    Http {
        requests: u64,
        /// 5xx responses.
        errors: u64,
        rps: Option<f64>,
        /// Fraction (0..=1) of the window's requests answered 5xx.
        error_rate: Option<f64>,
        /// 99th percentile of the window's durations, from the histogram buckets.
        p99_ms: Option<f64>,
    },
    Tcp {
        connections: u64,
        /// Bytes both ways.
        bytes: u64,
        cps: Option<f64>,
        bps: Option<f64>,
    },
}
