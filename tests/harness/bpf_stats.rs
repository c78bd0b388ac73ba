//! What meshpath's kernel programs cost, counted by the kernel: with BPF run statistics on, every
//! program's `bpf_prog_info` carries `run_cnt` and `run_time_ns`. [`measure`] snapshots them for
//! one node's programs around a batch of short connections through a ClusterIP and gives each
//! program's runs per connection and nanoseconds per run; [`measure_keepalive`] does the same
//! over requests on a few kept-alive connections, where sk_msg runs once per message on sockets
//! that have been in use a while, and the per-connection callbacks hardly at all.
//!
//! The statistics are switched on through a `BPF_ENABLE_STATS` descriptor, not the
//! `kernel.bpf_stats_enabled` sysctl: the kernel counts the two separately and keeps the
//! statistics on while either asks, so the sysctl keeps whatever value it had (another user's
//! setting is neither overridden nor reset) and the statistics go off again when the descriptor
//! is dropped, even if the measuring process dies.
//!
//! Only this node's programs are read: the cgroup programs attached to its managed cgroup, and
//! the sk_msg program that uses its pinned SOCKHASH. Other runs on the machine have their own.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::fortio::Load;
use crate::Node;

/// Keeps the kernel's BPF run statistics on while it lives.
pub struct StatsOn(#[allow(dead_code)] OwnedFd);

/// Switches the run statistics on (see the module doc for why not the sysctl).
pub fn enable() -> Result<StatsOn> {
    /// `union bpf_attr` for `BPF_ENABLE_STATS`: `type` = `BPF_STATS_RUN_TIME` (0).
    #[repr(C)]
    struct Attr {
        kind: u32,
    }
    const BPF_ENABLE_STATS: libc::c_long = 32;
    let mut attr = Attr { kind: 0 };
    // SAFETY: a valid attr of the size given; the command returns a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            &mut attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(StatsOn(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

fn bpftool(args: &[&str]) -> Result<Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("bpftool {args:?}: JSON"))
}

/// (name, id) of this node's programs: the cgroup ones attached to `cgroup`, and the sk_msg
/// program that redirects through the SOCKHASH pinned in `pin_dir` (when it is attached).
pub fn programs(cgroup: &Path, pin_dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut progs: Vec<(String, u64)> = bpftool(&["cgroup", "show", &cgroup.to_string_lossy()])?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["id"].as_u64()?)))
        .collect();
    let socks = pin_dir.join("MP_SOCKS");
    if socks.exists() {
        let map_id = bpftool(&["map", "show", "pinned", &socks.to_string_lossy()])?["id"]
            .as_u64()
            .context("no id for the pinned SOCKHASH")?;
        let all = bpftool(&["prog", "show"])?;
        for p in all.as_array().into_iter().flatten() {
            let uses_ours = p["map_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|i| i.as_u64() == Some(map_id)));
            if p["type"] == "sk_msg" && uses_ours {
                if let (Some(name), Some(id)) = (p["name"].as_str(), p["id"].as_u64()) {
                    progs.push((name.to_owned(), id));
                }
            }
        }
    }
    progs.sort();
    progs.dedup();
    Ok(progs)
}

/// name → (run_cnt, run_time_ns) now.
pub fn sample(progs: &[(String, u64)]) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut m = BTreeMap::new();
    for (name, id) in progs {
        let p = bpftool(&["prog", "show", "id", &id.to_string()])?;
        let e = m.entry(name.clone()).or_insert((0, 0));
        e.0 += p["run_cnt"].as_u64().unwrap_or(0);
        e.1 += p["run_time_ns"].as_u64().unwrap_or(0);
    }
    Ok(m)
}

/// One program's cost over a measurement.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
    pub ns_per_run: f64,
    pub runs_per_connection: f64,
}

/// The programs that ran between two samples, over `connections` connections.
pub fn cost(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    connections: u64,
) -> Vec<ProgramCost> {
    after
        .iter()
        .filter_map(|(name, &(cnt, ns))| {
            let (c0, n0) = before.get(name).copied().unwrap_or((0, 0));
            let runs = cnt.saturating_sub(c0);
            let run_time_ns = ns.saturating_sub(n0);
            (runs > 0).then(|| ProgramCost {
                name: name.clone(),
                runs,
                run_time_ns,
                ns_per_run: run_time_ns as f64 / runs as f64,
                runs_per_connection: runs as f64 / connections.max(1) as f64,
            })
        })
        .collect()
}

/// Per-program cost of `connections` short connections (one HTTP request each, fortio with
/// keep-alive off) from pod `client` to `url`, with the statistics on only meanwhile.
pub fn measure(node: &Node, client: usize, url: &str, connections: u32) -> Result<Measured> {
    measure_load(node, client, url, connections, false)
}

/// Per-program cost of `requests` HTTP requests over [`CLIENT_CONNECTIONS`] kept-alive
/// connections from pod `client` to `url`. The result's "per connection" figures are per
/// request here.
pub fn measure_keepalive(node: &Node, client: usize, url: &str, requests: u32) -> Result<Measured> {
    measure_load(node, client, url, requests, true)
}

/// fortio's concurrent connections in both measurements (keep-alive off: each carries one
/// request and is replaced).
pub const CLIENT_CONNECTIONS: u32 = 4;

fn measure_load(
    node: &Node,
    client: usize,
    url: &str,
    requests: u32,
    keepalive: bool,
) -> Result<Measured> {
    let progs = programs(node.cgroup_path(), node.pin_dir())?;
    if progs.is_empty() {
        bail!("no programs attached to {}", node.cgroup_path().display());
    }
    let stats = enable()?;
    let before = sample(&progs)?;
    let load = Load {
        url: url.to_owned(),
        qps: 0,
        connections: CLIENT_CONNECTIONS,
        duration: Duration::from_secs(60),
        requests: Some(requests),
        keepalive,
    };
    let report = node.start_fortio_load(client, &load)?.finish()?;
    let after = sample(&progs)?;
    drop(stats);
    if report.ok != u64::from(requests) {
        bail!(
            "{} of {requests} requests answered 200 ({:?}): {}",
            report.ok,
            report.codes,
            report.log_tail
        );
    }
    Ok(Measured {
        connections: u64::from(requests),
        programs: cost(&before, &after, u64::from(requests)),
    })
}

/// What [`measure`] (or [`measure_keepalive`]) saw.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    /// Connections, or requests for [`measure_keepalive`].
    pub connections: u64,
    pub programs: Vec<ProgramCost>,
}

impl Measured {
    pub fn get(&self, name: &str) -> Option<&ProgramCost> {
        self.programs.iter().find(|p| p.name == name)
    }

    /// One line per program, for logs and test output.
    pub fn lines(&self) -> String {
        self.programs
            .iter()
            .map(|p| {
                format!(
                    "{:<16} {:>7} runs {:>6.2}/conn {:>8.0} ns/run\n",
                    p.name, p.runs, p.runs_per_connection, p.ns_per_run
                )
            })
            .collect()
    }
}

/// What a cost test needs: the agent's features and fortio.
pub fn needs() -> Vec<crate::Feature> {
    let mut f = crate::AGENT.to_vec();
    f.push(crate::Feature::Fortio);
    f
}

/// A two-pod cluster (agent with `agent_args`) whose Service `web` at `vip`:80 is pod 1's fortio
/// server, once the agent has programmed it: the set-up the kernel cost tests share.
pub fn fortio_service(vip: &str, agent_args: &[&str]) -> crate::Cluster {
    use crate::fortio::PORT;
    use crate::manifests::{docs, endpoint_slice, service, Ep};
    let c = crate::Cluster::start(2, &[], agent_args);
    c.node.spawn_fortio_server(1).expect("fortio server");
    let web_ip = c.node.pod(1).ip();
    c.write(
        "web.yaml",
        &docs(&[
            service("web", vip, 80, &PORT.to_string(), "TCP", ""),
            endpoint_slice("web", PORT, "TCP", &[Ep::ready(web_ip)]),
        ]),
    );
    c.wait_status("web programmed", Duration::from_secs(10), |s| {
        crate::agent::service(s, "default/web:").is_some()
    });
    c
}
