//! Starting the agent under test on a [`Node`]: the one place that knows the arguments that tie
//! it to the node (cgroup, pin dir, log), run its node proxy and choose where its cluster comes
//! from (a manifests directory or the harness's Kubernetes control plane).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::agent::Agent;
use crate::kube::KubeCluster;
use crate::manifests;
use crate::Node;

/// The node proxy's address: the pods' gateway, `br0` in the node namespace (see `net.rs`).
pub const PROXY_IP: &str = "10.244.0.1";

/// Where the agent reads the cluster from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// `--manifests DIR`.
    Manifests(&'a Path),
    /// `--source kube` on this control plane, as the node `node_name` (`--node-name`).
    Kube {
        cluster: &'a KubeCluster,
        node_name: &'a str,
    },
}

/// Whether the agent runs its node proxy (L7 routes are steered to it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    Off,
    On,
}

impl Node {
    /// `manifests/` in the work dir, created with `files` (name, content) in it: the directory
    /// for [`Source::Manifests`].
    pub fn write_manifests(&self, files: &[(&str, String)]) -> Result<PathBuf> {
        let dir = self.work_dir().join("manifests");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, content) in files {
            manifests::write(&dir, name, content)?;
        }
        Ok(dir)
    }

    /// Starts `meshpath agent` on this node: attached to its managed cgroup, maps pinned in its
    /// pin dir, log in `agent.log` of its work dir, the admin listener on a free loopback port
    /// unless `extra` names one, and with [`Proxy::On`] the node proxy on [`PROXY_IP`] inside
    /// the node namespace. Returns once the first snapshot is programmed.
    pub fn start_agent(&self, source: Source<'_>, proxy: Proxy, extra: &[&str]) -> Result<Agent> {
        let mut args: Vec<String> = Vec::new();
        if proxy == Proxy::On {
            let netns = format!("/var/run/netns/{}", self.node_netns_name());
            args.extend([
                "--proxy-ip".into(),
                PROXY_IP.into(),
                "--proxy-netns".into(),
                netns,
            ]);
        }
        if !extra.contains(&"--admin-addr") {
            // Its own port: parallel tests (and an agent on the default port) never share one.
            let port = crate::kube::free_port()?;
            args.extend(["--admin-addr".into(), format!("127.0.0.1:{port}")]);
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.work_dir().join("agent.log");
        match source {
            Source::Manifests(dir) => {
                Agent::start(dir, self.cgroup_path(), self.pin_dir(), &log, &args)
            }
            Source::Kube { cluster, node_name } => {
                let mut kube_args = vec!["--node-name", node_name];
                kube_args.extend(args);
                let (cgroup, pins) = (self.cgroup_path(), self.pin_dir());
                Agent::start_kube(cluster.kubeconfig(), cgroup, pins, &log, &kube_args)
            }
        }
    }
}
