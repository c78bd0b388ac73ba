//! `cargo xtask bench-kube`: how fast `meshpath agent --source kube` follows a real API server.
//!
//! For each size (default 1 000 and 10 000 Services with 10 endpoints each, in a fresh
//! kube-apiserver + etcd from scripts/kube-bins.sh):
//! - **full sync**: agent start → every object listed (the agent's `Kubernetes state listed`
//!   log line) → maps programmed (its first `programmed` line), from the agent's own log
//!   timestamps;
//! - **event → map latency**: `--changes` EndpointSlice patches, one at a time; for each, the
//!   agent's `change programmed latency_us`, which runs from the watch event's arrival at the
//!   agent to the maps written (the API server's own write→watch delay is not included);
//! - **agent RSS**: the peak (VmHWM) after both.
//!
//! Medians and p99 go to stdout and to bench-results/kube-latest.{md,json}.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshpath_tests::agent::Agent;
use meshpath_tests::kube::{KubeCluster, KubeOptions};
use meshpath_tests::Node;

use crate::paths::workspace_root;

#[derive(clap::Args)]
pub struct BenchKubeArgs {
    /// Cluster sizes: Services (each with one EndpointSlice of 10 ready endpoints).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub services: Vec<u32>,
    /// EndpointSlice changes to time at each size.
    #[arg(long, default_value_t = 100)]
    pub changes: u32,
    /// Use the existing release binaries.
    #[arg(long)]
    pub no_build: bool,
}

const ENDPOINTS: u32 = 10;

struct Row {
    services: u32,
    create_s: f64,
    listed_ms: f64,
    programmed_ms: f64,
    latency_us: Vec<u64>,
    rss_kib: u64,
}

pub fn run(args: BenchKubeArgs) -> anyhow::Result<()> {
    crate::test::require_root("the agent loads eBPF programs into a test cgroup")?;
    if !args.no_build {
        crate::build_ebpf::run()?;
        crate::test::cargo(&["build", "--release", "-p", "meshpath", "--bins"])?;
    }
    let meshpath = workspace_root().join("target/release/meshpath");
    if !meshpath.is_file() {
        bail!("{} missing: run without --no-build", meshpath.display());
    }
    std::env::set_var("MESHPATH_BIN", &meshpath);
    let mut rows = Vec::new();
    for &n in &args.services {
        rows.push(one_size(n, args.changes)?);
    }
    let report = render(&rows, args.changes);
    println!("{report}");
    let dir = workspace_root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("kube-latest.md"), &report)?;
    Ok(())
}

fn one_size(n: u32, changes: u32) -> anyhow::Result<Row> {
    eprintln!("bench-kube: {n} Services × {ENDPOINTS} endpoints");
    let kube = KubeCluster::start_with(KubeOptions {
        service_cidr: "10.96.0.0/12".into(),
    })?;
    let t0 = Instant::now();
    create_objects(&kube, n)?;
    let create_s = t0.elapsed().as_secs_f64();
    eprintln!("bench-kube: created {} objects in {create_s:.1} s", 2 * n);

    let node = Node::new(1)?;
    let log = node.work_dir().join("agent.log");
    let started = unix_now_us();
    let mut agent = Agent::start_kube(
        kube.kubeconfig(),
        node.cgroup_path(),
        node.pin_dir(),
        &log,
        &["--admin-addr", "127.0.0.1:0"],
    )?;
    let text = agent.log();
    let listed_ms = (log_time_us(&text, "Kubernetes state listed")? - started) as f64 / 1e3;
    let programmed_ms = (log_time_us(&text, "programmed")? - started) as f64 / 1e3;

    let mut latency_us = Vec::new();
    for i in 0..changes {
        let before = agent.log().matches("change programmed").count();
        let ip = format!("10.250.{}.{}", (i / 250) % 250, i % 250 + 1);
        let patch = format!(
            "[{{\"op\":\"replace\",\"path\":\"/endpoints/0/addresses/0\",\"value\":\"{ip}\"}}]"
        );
        kube.kubectl_ok([
            "patch",
            "endpointslice",
            "svc-0-1",
            "--type=json",
            "-p",
            &patch,
        ])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = agent.log();
            if text.matches("change programmed").count() > before {
                latency_us.push(last_latency_us(&text)?);
                break;
            }
            if Instant::now() > deadline {
                bail!("change {i} not programmed within 10 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let rss_kib = agent.pid().map(vm_hwm_kib).transpose()?.unwrap_or(0);
    agent.stop()?;
    Ok(Row {
        services: n,
        create_s,
        listed_ms,
        programmed_ms,
        latency_us,
        rss_kib,
    })
}

/// Services without selectors and their EndpointSlices, created by four kubectl processes at
/// once (the API server takes one object per request).
fn create_objects(kube: &KubeCluster, n: u32) -> anyhow::Result<()> {
    let parts = 4;
    let mut files = Vec::new();
    for part in 0..parts {
        let file = kube.run_dir().join(format!("objects-{part}.yaml"));
        let mut yaml = String::new();
        for i in (part..n).step_by(parts as usize) {
            write_service(&mut yaml, i);
        }
        std::fs::write(&file, yaml)?;
        files.push(file.display().to_string());
    }
    std::thread::scope(|s| {
        let workers: Vec<_> = files
            .iter()
            .map(|f| s.spawn(move || kube.kubectl_ok(["create", "-o", "name", "-f", f.as_str()])))
            .collect();
        for w in workers {
            w.join().expect("kubectl thread")?;
        }
        Ok(())
    })
}

fn write_service(yaml: &mut String, i: u32) {
    let _ = write!(
        yaml,
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\nspec:\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-1\n  labels:\n    kubernetes.io/service-name: svc-{i}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\n  protocol: TCP\nendpoints:\n"
    );
    for j in 0..ENDPOINTS {
        let a = i * ENDPOINTS + j + 1;
        let _ = writeln!(
            yaml,
            "- addresses: [\"10.{}.{}.{}\"]",
            128 + (a >> 16),
            (a >> 8) & 255,
            a & 255
        );
    }
}

/// Unix µs of the first agent log line containing `needle` (tracing's RFC 3339 UTC stamp).
fn log_time_us(log: &str, needle: &str) -> anyhow::Result<u64> {
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .with_context(|| format!("agent log has no {needle:?}"))?;
    let stamp = line.split_whitespace().next().unwrap_or_default();
    rfc3339_us(stamp).with_context(|| format!("timestamp of {line:?}"))
}

fn last_latency_us(log: &str) -> anyhow::Result<u64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("change programmed"))
        .context("no change programmed line")?;
    let v = line
        .split("latency_us=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .context("no latency_us")?;
    Ok(v.parse()?)
}

/// `2026-11-26T08:06:37.235166Z` → Unix µs (via `date`, to keep xtask free of a time crate).
fn rfc3339_us(stamp: &str) -> anyhow::Result<u64> {
    let out = Command::new("date")
        .args(["-u", "-d", stamp, "+%s%6N"])
        .output()?;
    if !out.status.success() {
        bail!("date cannot parse {stamp:?}");
    }
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

fn unix_now_us() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    d.as_micros() as u64
}

fn vm_hwm_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

fn render(rows: &[Row], changes: u32) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "meshpath bench-kube ({}; release agent, kube-apiserver and etcd on loopback, {} cores)\n",
        std::process::Command::new("uname")
            .arg("-r")
            .output()
            .map(|o| format!("kernel {}", String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(s, "| Services × 10 endpoints | objects created in | agent start → listed | → maps programmed | event → map p50 | p99 | max ({changes} changes) | agent RSS peak |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for r in rows {
        let mut l = r.latency_us.clone();
        l.sort_unstable();
        let _ = writeln!(
            s,
            "| {} | {:.1} s | {:.0} ms | {:.0} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} MiB |",
            r.services,
            r.create_s,
            r.listed_ms,
            r.programmed_ms,
            percentile(&l, 50.0) / 1e3,
            percentile(&l, 99.0) / 1e3,
            l.last().copied().unwrap_or(0) as f64 / 1e3,
            r.rss_kib as f64 / 1024.0
        );
    }
    s
}
