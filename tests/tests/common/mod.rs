//! Shared set-up for the privileged tests: a node, a manifests directory and a running agent.
#![allow(dead_code)] // each test binary uses a different part

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use meshpath_tests::agent::{self, Agent};
use meshpath_tests::manifests;
use meshpath_tests::Node;

/// Fields drop in order: the agent stops before the node (and its pin dir) goes away.
pub struct Cluster {
    pub agent: Agent,
    pub manifests: PathBuf,
    pub node: Node,
}

impl Cluster {
    /// A node with `pods` pods, `files` written into its manifests dir, and the agent started on it.
    pub fn start(pods: usize, files: &[(&str, String)], agent_args: &[&str]) -> Cluster {
        let args: Vec<String> = agent_args.iter().map(|a| a.to_string()).collect();
        Self::start_inner(pods, files, move |_| args)
    }

    /// As [`Cluster::start`], with agent arguments that depend on the node (its netns names).
    pub fn start_with(pods: usize, agent_args: impl FnOnce(&Node) -> Vec<String>) -> Cluster {
        Self::start_inner(pods, &[], agent_args)
    }

    fn start_inner(
        pods: usize,
        files: &[(&str, String)],
        agent_args: impl FnOnce(&Node) -> Vec<String>,
    ) -> Cluster {
        let node = Node::new(pods).expect("building the test node");
        let agent_args = agent_args(&node);
        let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
        let dir = node.work_dir().join("manifests");
        std::fs::create_dir_all(&dir).expect("manifests dir");
        for (name, content) in files {
            manifests::write(&dir, name, content).expect("writing manifest");
        }
        let log = node.work_dir().join("agent.log");
        let agent = Agent::start(&dir, node.cgroup_path(), node.pin_dir(), &log, &agent_args)
            .expect("starting meshpath agent");
        Cluster {
            agent,
            manifests: dir,
            node,
        }
    }

    pub fn write(&self, file: &str, content: &str) {
        manifests::write(&self.manifests, file, content).expect("writing manifest");
    }

    pub fn status(&self) -> serde_json::Value {
        self.agent.status().expect("meshpath status")
    }

    /// Polls `meshpath status` until `pred` holds; returns how long that took.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "{what}: not within {timeout:?}; status: {s:#}\nagent log:\n{}",
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the agent's log contains every needle (one log line need not hold them all).
    pub fn wait_log(&self, needles: &[&str], timeout: Duration) {
        let start = Instant::now();
        loop {
            let log = self.agent.log();
            if needles.iter().all(|n| log.contains(n)) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "agent log lacks {needles:?} after {timeout:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip.parse::<Ipv4Addr>().expect("ip"), port))
}

/// The status entry of a service by name prefix ("default/web:").
pub fn svc<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    agent::service(status, name)
        .unwrap_or_else(|| panic!("service {name} not in status: {status:#}"))
}

pub fn backends(status: &serde_json::Value, name: &str) -> Vec<String> {
    svc(status, name)["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b.as_str().expect("str").to_string())
        .collect()
}

pub fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} missing: {status:#}"))
}
