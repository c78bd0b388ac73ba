//! Bulk TCP throughput: `mp-testpod stream` server in the backend pod, client in the client pod.
//! One connection, time-bounded (the run's `--duration`), 128 KiB writes; the rate is what the
//! receiver counted divided by the time until it acknowledged (see mp_testpod/stream.rs).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use meshpath_tests::{testpod_bin, Node, Pod};
use serde_json::Value;

use super::proc::{self, ReadyOn};

/// The stream server's port in the backend pod.
pub const PORT: u16 = 9000;

pub fn spawn_server(node: &Node, pod: &Pod) -> Result<()> {
    spawn_server_logged(node, pod, "stream-server.log")
}

/// [`spawn_server`] with its own log file (a second server on another pod).
pub fn spawn_server_logged(node: &Node, pod: &Pod, log: &str) -> Result<()> {
    let mut cmd = pod.command(testpod_bin()?)?;
    cmd.args(["stream", "--listen", &PORT.to_string()]);
    let log = node.work_dir().join(log);
    proc::spawn_server(
        node,
        pod,
        "stream server",
        cmd,
        (ReadyOn::Stdout, "ready"),
        &log,
    )
}

/// Result of one stream run.
pub struct StreamResult {
    pub bytes_per_sec: f64,
    pub raw: Value,
}

pub fn run(pod: &Pod, addr: SocketAddr, duration: Duration) -> Result<StreamResult> {
    let mut cmd = pod.command(testpod_bin()?)?;
    let secs = format!("{:.3}", duration.as_secs_f64());
    cmd.args(["stream", "--addr", &addr.to_string(), "--seconds", &secs]);
    // The client stops writing after `duration`; the slack covers connect and the final drain.
    let out = proc::run_with_deadline(cmd, duration + Duration::from_secs(40))?;
    let ctx = || {
        format!(
            "mp-testpod stream --addr {addr} in {}: {}; stdout: {}; stderr: {}",
            pod.label(),
            out.status,
            out.stdout.trim(),
            proc::tail(&out.stderr, 10)
        )
    };
    if !out.status.success() {
        bail!("{}", ctx());
    }
    let raw: Value = serde_json::from_str(out.stdout.trim()).with_context(ctx)?;
    let bytes_per_sec = raw["bytes_per_sec"].as_f64().with_context(ctx)?;
    if raw["bytes"].as_u64() != raw["sent"].as_u64() {
        bail!(
            "server counted {} bytes, client sent {}: {}",
            raw["bytes"],
            raw["sent"],
            ctx()
        );
    }
    Ok(StreamResult { bytes_per_sec, raw })
}
