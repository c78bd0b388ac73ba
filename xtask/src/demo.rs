//! `cargo xtask demo`: the main job on the embedded default source. A local netns "node" with the
//! proof of concept's gateway Service and three backend pods, the agent in manifests mode, and a
//! request loop from a client pod against the ClusterIP that shows the backends taking turns.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use meshpath_tests::agent::{self, Agent};
use meshpath_tests::Node;

use crate::paths::{debug_bin, workspace_root};
use crate::test::{cargo, require_root};

const SERVICE: &str = "default/golang-app-gateway-svc:";
const BACKENDS: [&str; 3] = [
    "golang-app-gateway-v1",
    "golang-app-gateway-v2",
    "golang-app-gateway-v3",
];

pub fn run(requests: u32) -> anyhow::Result<()> {
    require_root("the demo creates network namespaces and cgroups and loads eBPF programs")?;
    crate::build_ebpf::run()?;
    cargo(&["build", "-p", "meshpath", "-p", "meshpath-tests", "--bins"])?;
    let meshpath = debug_bin("meshpath");
    // The harness finds the binaries through these (edition 2021: set_var is safe; single thread).
    std::env::set_var("MESHPATH_BIN", &meshpath);
    std::env::set_var("MP_TESTPOD_BIN", debug_bin("mp-testpod"));

    let node = Node::new(4).context("building the demo node")?;
    println!(
        "node {}: client pod {} ({})",
        node.id(),
        node.pod(0).label(),
        node.pod(0).ip()
    );
    for (i, name) in BACKENDS.iter().enumerate() {
        node.spawn_server(i + 1, name, &[8080], &[], &[8081])?;
        println!(
            "  backend pod {} ({}) runs {name} on :8080",
            node.pod(i + 1).label(),
            node.pod(i + 1).ip()
        );
    }

    let manifests = node.work_dir().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let examples = workspace_root().join("examples/manifests");
    for entry in
        std::fs::read_dir(&examples).with_context(|| format!("reading {}", examples.display()))?
    {
        let path = entry?.path();
        std::fs::copy(&path, manifests.join(path.file_name().expect("file name")))?;
    }
    let log = node.work_dir().join("agent.log");
    let mut agent = Agent::start(
        &manifests,
        node.cgroup_path(),
        node.pin_dir(),
        &log,
        &["--default-lb-policy", "round-robin"],
    )?;
    println!(
        "agent: meshpath agent --manifests {} --default-lb-policy round-robin\n  (the manifests are a copy of examples/manifests; agent log: {})",
        manifests.display(),
        log.display()
    );

    let status = agent.status()?;
    let Some(svc) = agent::service(&status, SERVICE) else {
        bail!(
            "the agent did not program {SERVICE}; its log:\n{}",
            agent.log()
        );
    };
    let vip: SocketAddr = svc["frontend"].as_str().context("frontend")?.parse()?;
    println!("{SERVICE} has no clusterIP in its manifest; meshpath allocated {vip}\n");

    for i in 1..=requests {
        let r = node.tcp(0, vip, 1)?;
        let who = r
            .counts
            .keys()
            .next()
            .cloned()
            .unwrap_or_else(|| format!("error {:?}", r.errors));
        println!(
            "request {i:>2}: connect {vip} -> answered by {who:<22} (getpeername: {})",
            r.first_peer.as_deref().unwrap_or("-")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    println!("\n$ meshpath status --pin-dir {}", node.pin_dir().display());
    let out = Command::new(&meshpath)
        .args(["status", "--pin-dir"])
        .arg(node.pin_dir())
        .env("NO_COLOR", "1")
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    agent.stop()?;
    println!("\ndemo done: agent stopped; the node's namespaces, cgroups and pinned maps are removed now.");
    Ok(())
}
