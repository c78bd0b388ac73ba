//! A node with the agent running on a manifests directory: the set-up most privileged tests
//! share. Tests edit the directory ([`Cluster::write`]) and wait for the agent to follow.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::Agent;
use crate::manifests;
use crate::node_agent::{Proxy, Source};
use crate::wait::wait_until;
use crate::Node;

/// Fields drop in order: the agent stops before the node (and its pin dir) goes away.
pub struct Cluster {
    pub agent: Agent,
    pub manifests: PathBuf,
    pub node: Node,
}

impl Cluster {
    /// A node with `pods` pods, `files` written into its manifests dir, and the agent started on
    /// it with `agent_args`.
    pub fn start(pods: usize, files: &[(&str, String)], agent_args: &[&str]) -> Cluster {
        Cluster::start_inner(pods, files, Proxy::Off, |_| {
            agent_args.iter().map(|a| (*a).to_owned()).collect()
        })
    }

    /// As [`Cluster::start`] with no files, with agent arguments that depend on the node.
    pub fn start_with(pods: usize, agent_args: impl FnOnce(&Node) -> Vec<String>) -> Cluster {
        Cluster::start_inner(pods, &[], Proxy::Off, agent_args)
    }

    /// The agent with its node proxy (see [`Node::start_agent`]), plus `extra` arguments that
    /// may depend on the node; the proxy's admin listener is at `agent.admin_addr()`.
    pub fn with_proxy(pods: usize, extra: impl FnOnce(&Node) -> Vec<String>) -> Cluster {
        Cluster::start_inner(pods, &[], Proxy::On, extra)
    }

    fn start_inner(
        pods: usize,
        files: &[(&str, String)],
        proxy: Proxy,
        agent_args: impl FnOnce(&Node) -> Vec<String>,
    ) -> Cluster {
        let node = Node::new(pods).expect("building the test node");
        let agent_args = agent_args(&node);
        let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
        let dir = node.write_manifests(files).expect("writing manifests");
        let agent = node
            .start_agent(Source::Manifests(&dir), proxy, &agent_args)
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

    pub fn status(&self) -> Value {
        self.agent.status().expect("meshpath status")
    }

    /// Polls `meshpath status` until `pred` holds; returns how long that took.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Duration {
        let start = Instant::now();
        let mut last = Value::Null;
        let reached = wait_until(timeout, || {
            last = self.status();
            pred(&last)
        });
        assert!(
            reached,
            "{what}: not within {timeout:?}; status: {last:#}\nagent log:\n{}",
            self.agent.log()
        );
        start.elapsed()
    }

    /// Waits until the agent's log contains every needle (one log line need not hold them all).
    pub fn wait_log(&self, needles: &[&str], timeout: Duration) {
        let mut log = String::new();
        let found = wait_until(timeout, || {
            log = self.agent.log();
            needles.iter().all(|n| log.contains(n))
        });
        assert!(
            found,
            "agent log lacks {needles:?} after {timeout:?}:\n{log}"
        );
    }

    /// How many times the agent has logged `needle` so far (to wait for the next one).
    pub fn log_count(&self, needle: &str) -> usize {
        self.agent.log().matches(needle).count()
    }
}

/// `ip:port` as a socket address (tests write VIPs as strings).
pub fn addr(ip: &str, port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::V4(std::net::SocketAddrV4::new(ip.parse().expect("ip"), port))
}
