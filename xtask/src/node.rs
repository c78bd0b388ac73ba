//! `cargo xtask node up|deploy|status|down|test`: one real Kubernetes node on this machine
//! (scripts/node.sh: control plane, containerd + runc, a kubelet, CNI) and meshpath's DaemonSet on
//! it. The node's state lives in $MESHPATH_NODE_DIR (default /tmp/meshpath-node).

use std::process::Command;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use crate::paths::{debug_bin, workspace_root};
use crate::test::{cargo, require_root};

#[derive(Args)]
pub struct NodeArgs {
    action: Action,
}

#[derive(Clone, Copy, ValueEnum)]
enum Action {
    /// Build (once, into caches) and start the node; wait until it is Ready.
    Up,
    /// Build the agent from this tree, make its image, `kubectl apply -f deploy/`, wait for Ready.
    Deploy,
    /// What runs, the node and its pods.
    Status,
    /// Stop everything `up` started and remove what it made.
    Down,
    /// The privileged test that runs its own node (cold: builds kubelet, containerd, runc).
    Test,
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    require_root(
        "the node's kubelet and containerd manage mounts, cgroups and network namespaces",
    )?;
    let script = match args.action {
        Action::Up => "up",
        Action::Deploy => {
            // The image is made of the agent of this tree, which embeds the eBPF object.
            crate::build_ebpf::run()?;
            cargo(&["build", "-p", "meshpath"])?;
            "deploy"
        }
        Action::Status => "status",
        Action::Down => "down",
        Action::Test => return test(),
    };
    let status = Command::new("bash")
        .current_dir(workspace_root())
        .arg("scripts/node.sh")
        .arg(script)
        .env("MESHPATH_AGENT_BIN", debug_bin("meshpath"))
        .status()
        .context("running scripts/node.sh")?;
    if !status.success() {
        bail!("scripts/node.sh {script} failed ({status})");
    }
    Ok(())
}

/// Only the real-node test binary (not the workspace's): its gate, MESHPATH_REAL_NODE=1, keeps
/// it out of the default suite because of its cold time.
fn test() -> anyhow::Result<()> {
    crate::build_ebpf::run()?;
    cargo(&["build", "-p", "meshpath"])?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args([
            "test",
            "-p",
            "meshpath-tests",
            "--test",
            "real_node",
            "--",
            "--nocapture",
        ])
        .env("MESHPATH_BIN", debug_bin("meshpath"))
        .env("MESHPATH_REAL_NODE", "1")
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("the real-node test failed ({status})");
    }
    Ok(())
}
