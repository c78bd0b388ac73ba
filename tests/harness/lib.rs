//! Privileged test harness for meshpath.
//!
//! A [`Node`] is a miniature Kubernetes node built from real kernel objects: a node network
//! namespace with a bridge, one network namespace per pod wired to that bridge by a veth pair, a
//! cgroup v2 subtree the agent under test attaches its eBPF programs to, an *unmanaged* sibling
//! cgroup for traffic that must not be touched by those programs, a bpffs pin directory and a
//! scratch directory. Workloads inside the pods are instances of the `mp-testpod` helper binary
//! (see `harness/bin/mp_testpod.rs`).
//!
//! The machine is shared (other test runs, other developers), so every kernel object carries a
//! per-run id (see [`RunId`]) and is removed again when the `Node` is dropped, including while a
//! failing test unwinds. Leftovers of runs whose process died without unwinding are removed the
//! next time any `Node` is created.
//!
//! Everything here needs root; a test first asks [`privileged`] whether this machine can run it
//! and returns (printing `SKIP <test>: <reason>`) when it cannot.

pub mod agent;
pub mod bpf_stats;
mod cgroup;
mod children;
mod client;
mod cluster;
pub mod fortio;
mod hold;
pub mod kube;
pub mod manifests;
mod net;
mod node;
mod node_agent;
mod pod;
mod runid;
pub mod seed_walkthrough;
mod skip;
mod stale;
mod sys;
pub mod wait;

pub use client::{run_until, testpod_bin, ClientReport, Finished, RequestRecord};
pub use cluster::{addr, Cluster};
pub use hold::Hold;
pub use kube::{FakeKubelet, KubeCluster, KubeOptions, LocalNode, RunningPod};
pub use node::Node;
pub use node_agent::{Proxy, Source, PROXY_IP};
pub use pod::{Pod, Target};
pub use runid::RunId;
pub use skip::{
    first_missing, privileged, skip_line, skipped_test, Feature, Privileged, AGENT, KUBE,
    KUBE_AGENT, NODE,
};
pub use sys::{bpffs_root, cgroup2_root, kernel_at_least, netns_exec, run_checked};
pub use wait::{poll, wait_until};

/// Prefix of every name (netns, cgroup, pin dir, temp dir) the harness creates. Stale-run cleanup
/// only ever looks at names with this prefix.
pub const NAME_PREFIX: &str = "mpt-";
