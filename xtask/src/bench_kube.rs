//! `cargo xtask bench-kube`: how fast `meshpath agent --source kube` follows a real API server.
//!
//! For each size (default 1 000 and 10 000 Services with 10 endpoints each, in a fresh
//! kube-apiserver + etcd from scripts/kube-bins.sh):
//! - **full sync**: agent start → every object listed (the agent's `Kubernetes state listed`
//!   log line) → maps programmed (its first `programmed frontends=` line; the bench stops if
//!   there is none, e.g. when the maps cannot hold that many Services), from the agent's own
//!   log timestamps;
//! - **event → map latency**: `--changes` EndpointSlice patches, one at a time; for each, the
//!   agent's `change programmed latency_us`, which runs from the watch event's arrival at the
//!   agent to the maps written (the API server's own write→watch delay is not included);
//! - **churn**: `--churn-rate` EndpointSlice patches per second for `--churn-seconds` (through
//!   [`churn`]), each to another Service; event → map latency over them, whether the agent keeps
//!   up (its latency does not grow over the phase, and it is done soon after the last patch),
//!   and its CPU over the phase;
//! - **agent RSS**: after the full sync (VmRSS) and the peak (VmHWM) at the end.
//!
//! `--agents plain,proxy` measures both agents over the same objects (creating 50 000 Services
//! takes the API server half an hour): `proxy` runs the agent with its node proxy, as the
//! DaemonSet does.
//!
//! Medians and p99 go to stdout and to bench-results/kube-latest.md, with the load average.

mod churn;
mod create;
mod http;
mod report;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshpath_tests::agent::Agent;
use meshpath_tests::kube::{KubeCluster, KubeOptions};
use meshpath_tests::{Node, PROXY_IP};

use crate::paths::workspace_root;

#[derive(clap::Args)]
pub struct BenchKubeArgs {
    /// Cluster sizes: Services (each with one EndpointSlice of 10 ready endpoints).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub services: Vec<u32>,
    /// EndpointSlice changes to time at each size.
    #[arg(long, default_value_t = 100)]
    pub changes: u32,
    /// Churn phase: EndpointSlice patches per second (0: no churn phase).
    #[arg(long, default_value_t = 200)]
    pub churn_rate: u32,
    /// Churn phase: how long, in seconds.
    #[arg(long, default_value_t = 30)]
    pub churn_seconds: u64,
    /// Agent starts over the same objects at each size: the full-sync figures are the median
    /// over them (each start also printed); the changes and churn run on the last.
    #[arg(long, default_value_t = 1)]
    pub agent_starts: u32,
    /// Agents to measure over the same objects, in turn: `plain` (no node proxy) and `proxy`
    /// (`--proxy-ip` on the node's bridge, as the DaemonSet in deploy/ runs it: every Service's
    /// HTTP port then has an entry in the proxy's routing table).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "plain")]
    pub agents: Vec<AgentKind>,
    /// Shorthand for `--agents proxy`.
    #[arg(long, conflicts_with = "agents")]
    pub proxy: bool,
    /// Use the existing release binaries.
    #[arg(long)]
    pub no_build: bool,
}

const ENDPOINTS: u32 = 10;

/// The agent's log line for a pass that wrote the maps (its `frontends=` field follows).
const PROGRAMMED: &str = "programmed frontends=";

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentKind {
    /// The agent without its node proxy.
    Plain,
    /// The agent with its node proxy (`--proxy-ip`).
    Proxy,
}

impl AgentKind {
    fn label(self) -> &'static str {
        match self {
            AgentKind::Plain => "without the node proxy",
            AgentKind::Proxy => "with the node proxy (--proxy-ip)",
        }
    }
}

impl BenchKubeArgs {
    fn agent_kinds(&self) -> Vec<AgentKind> {
        if self.proxy {
            vec![AgentKind::Proxy]
        } else {
            self.agents.clone()
        }
    }
}

struct Row {
    services: u32,
    agent: AgentKind,
    create_s: f64,
    listed_ms: f64,
    programmed_ms: f64,
    latency_us: Vec<u64>,
    synced_rss_kib: u64,
    /// `None` without a churn phase; `Err` with why it measured nothing.
    churn: Option<Result<Churn, String>>,
    rss_kib: u64,
}

struct Churn {
    sent: churn::Sent,
    latency_us: Vec<u64>,
    /// Last patch answered → the agent's last change programmed.
    drain_ms: f64,
    /// The longest time without a snapshot programmed while patches went out (edges of the
    /// phase included, [`longest_gap_us`]): at 200 patches per second, a gap of seconds while
    /// the agent is idle is no watch event reaching it, not the agent falling behind.
    longest_gap_ms: f64,
    /// Set when the phase was run a second time because the first one's watch stalled
    /// ([`Churn::watch_stalled`]): that phase's longest gap.
    repeated_after_stall_ms: Option<f64>,
    /// p99 over the first and the second half of the phase.
    halves_p99_us: (f64, f64),
    /// Agent CPU time over the phase and its drain, as a share of one core.
    cpu_share: f64,
}

impl Churn {
    /// Whether the watch stalled: no snapshot for as long as it takes `rate` patches a second
    /// to send 500 (2.5 s at 200/s), while the agent measures its own latency from the event's
    /// arrival and so cannot be what held it. Its figures would describe the API server.
    fn watch_stalled(&self, rate: u32) -> bool {
        self.longest_gap_ms > 500_000.0 / f64::from(rate.max(1))
    }

    /// Whether the agent kept up: its latency did not grow over the phase (a growing queue
    /// would make the second half slower), no change waited a second, and it was done within a
    /// second of the last patch.
    fn kept_up(&self) -> bool {
        let (first, second) = self.halves_p99_us;
        let max = self.latency_us.iter().max().copied().unwrap_or(0);
        second <= 2.0 * first + 5_000.0 && max < 1_000_000 && self.drain_ms < 1_000.0
    }
}

pub fn run(args: BenchKubeArgs) -> anyhow::Result<()> {
    crate::test::require_root("the agent loads eBPF programs into a test cgroup")?;
    if !args.no_build {
        crate::build_ebpf::run()?;
        crate::test::cargo(&["build", "--release", "-p", "meshpath", "--bins"])?;
    }
    // MESHPATH_BIN, when set, is run instead: e.g. a script that execs the release agent under
    // a profiler (keeping its pid, which the RSS and CPU figures read).
    if std::env::var_os("MESHPATH_BIN").is_none() {
        let meshpath = workspace_root().join("target/release/meshpath");
        if !meshpath.is_file() {
            bail!("{} missing: run without --no-build", meshpath.display());
        }
        std::env::set_var("MESHPATH_BIN", &meshpath);
    }
    let mut rows = Vec::new();
    for &n in &args.services {
        rows.extend(one_size(n, &args)?);
    }
    let report = report::render(&rows, &args);
    println!("{report}");
    let dir = workspace_root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("kube-latest.md"), &report)?;
    Ok(())
}

fn one_size(n: u32, args: &BenchKubeArgs) -> anyhow::Result<Vec<Row>> {
    eprintln!("bench-kube: {n} Services × {ENDPOINTS} endpoints");
    let kube = KubeCluster::start_with(KubeOptions {
        service_cidr: "10.96.0.0/12".into(),
    })?;
    let t0 = Instant::now();
    {
        let proxy = churn::Proxy::start(&kube)?;
        create::run(proxy.port, n)?;
    }
    let create_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "bench-kube: created {} objects in {create_s:.1} s ({:.0}/s)",
        2 * n,
        f64::from(2 * n) / create_s
    );
    args.agent_kinds()
        .into_iter()
        .map(|kind| one_agent(&kube, n, create_s, kind, args))
        .collect()
}

/// Full syncs, changes one at a time and the churn phase of one agent over the `n` Services.
fn one_agent(
    kube: &KubeCluster,
    n: u32,
    create_s: f64,
    kind: AgentKind,
    args: &BenchKubeArgs,
) -> anyhow::Result<Row> {
    let changes = args.changes;
    eprintln!("bench-kube: {n} Services, the agent {}", kind.label());
    let mut starts = Vec::new();
    let (_node, mut agent) = loop {
        let node = Node::new(1)?;
        let log = node.work_dir().join("agent.log");
        let started = unix_now_us();
        let netns = format!("/var/run/netns/{}", node.node_netns_name());
        let capacity = capacity_args(n);
        let mut extra = vec!["--admin-addr", "127.0.0.1:0"];
        extra.extend(capacity.iter().map(String::as_str));
        if kind == AgentKind::Proxy {
            extra.extend(["--proxy-ip", PROXY_IP, "--proxy-netns", &netns]);
        }
        let mut agent = Agent::start_kube(
            kube.kubeconfig(),
            node.cgroup_path(),
            node.pin_dir(),
            &log,
            &extra,
        )?;
        // The first pass logs its own `change programmed` after `programmed`: counted before
        // the first timed change, not as it.
        agent.wait_log("change programmed", Duration::from_secs(10))?;
        let text = agent.log();
        if !text.contains(PROGRAMMED) {
            // E.g. more Services than the datapath's maps hold: the write fails, every pass.
            let error = text
                .lines()
                .find(|l| l.contains(" ERROR "))
                .unwrap_or("no ERROR line");
            bail!("the agent did not program the maps at {n} Services: {error}");
        }
        let listed_ms = (log_time_us(&text, "Kubernetes state listed")? - started) as f64 / 1e3;
        let programmed_ms = (log_time_us(&text, PROGRAMMED)? - started) as f64 / 1e3;
        let pid = agent.pid().context("agent not running")?;
        let rss_kib = churn::status_kib(pid, "VmRSS:")?;
        let peak_kib = churn::status_kib(pid, "VmHWM:")?;
        eprintln!(
            "bench-kube: start {}: listed {listed_ms:.0} ms, programmed {programmed_ms:.0} ms, \
             RSS {:.1} MiB (peak so far {:.1} MiB; {})",
            starts.len() + 1,
            rss_kib as f64 / 1024.0,
            peak_kib as f64 / 1024.0,
            text.lines()
                .find(|l| l.contains("reconcile timing"))
                .and_then(|l| l.split("reconcile timing").nth(1))
                .unwrap_or("")
                .trim()
        );
        starts.push((listed_ms, programmed_ms, rss_kib));
        if starts.len() >= args.agent_starts.max(1) as usize {
            break (node, agent);
        }
        agent.stop()?;
    };
    let median = |f: fn(&(f64, f64, u64)) -> f64| {
        let mut v: Vec<f64> = starts.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let listed_ms = median(|s| s.0);
    let programmed_ms = median(|s| s.1);
    let synced_rss_kib = median(|s| s.2 as f64) as u64;
    let pid = agent.pid().context("agent not running")?;

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
    let churn = if args.churn_rate > 0 && args.churn_seconds > 0 {
        // A phase that measured nothing is reported as such: the rows measured before it and
        // the other columns of this one are kept.
        let phase = || churn_phase(kube, &agent, pid, n, args);
        Some(churn_with_a_repeat(args.churn_rate, phase).map_err(|e| {
            eprintln!("bench-kube: churn not measured: {e:#}");
            format!("{e:#}")
        }))
    } else {
        None
    };
    let rss_kib = churn::status_kib(pid, "VmHWM:")?;
    // Kept for a look at where a slow change went (the node's directory goes with it).
    let kept = workspace_root().join(format!(
        "target/bench-kube/agent-{n}{}.log",
        if kind == AgentKind::Proxy {
            "-proxy"
        } else {
            ""
        }
    ));
    if let Some(dir) = kept.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&kept, agent.log())?;
    agent.stop()?;
    Ok(Row {
        services: n,
        agent: kind,
        create_s,
        listed_ms,
        programmed_ms,
        latency_us,
        synced_rss_kib,
        churn,
        rss_kib,
    })
}

/// `phase` (the churn phase at `rate` patches a second), run once more when the first one's
/// watch stalled ([`Churn::watch_stalled`]).
fn churn_with_a_repeat(
    rate: u32,
    mut phase: impl FnMut() -> anyhow::Result<Churn>,
) -> anyhow::Result<Churn> {
    let churn = phase()?;
    if !churn.watch_stalled(rate) {
        return Ok(churn);
    }
    eprintln!(
        "bench-kube: no snapshot for {:.0} ms while patches went out (no watch event reached \
         the agent); the churn phase is run once more",
        churn.longest_gap_ms
    );
    let mut again = phase().with_context(|| {
        format!(
            "the repeat of a phase whose watch stalled {:.0} ms",
            churn.longest_gap_ms
        )
    })?;
    again.repeated_after_stall_ms = Some(churn.longest_gap_ms);
    Ok(again)
}

fn churn_phase(
    kube: &KubeCluster,
    agent: &Agent,
    pid: u32,
    n: u32,
    args: &BenchKubeArgs,
) -> anyhow::Result<Churn> {
    eprintln!(
        "bench-kube: churn, {} patches/s for {} s",
        args.churn_rate, args.churn_seconds
    );
    let proxy = churn::Proxy::start(kube)?;
    let before = agent.log().matches("change programmed").count();
    let cpu_before = churn::cpu_time(pid)?;
    let wall = Instant::now();
    let sending_from = unix_now_us();
    let sent = churn::run(
        proxy.port,
        n,
        args.churn_rate,
        Duration::from_secs(args.churn_seconds),
    )?;
    let sent_done = unix_now_us();
    // Drained: no new change programmed for a second, or for twice the slowest pass so far if
    // that is longer (a slow agent is quiet while it compiles), or 60 s passed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = agent.log().matches("change programmed").count();
    let mut quiet_since = Instant::now();
    loop {
        let text = agent.log();
        let slowest = text
            .lines()
            .filter(|l| l.contains("change programmed"))
            .skip(before)
            .filter_map(|l| latency_of(l).ok())
            .max()
            .unwrap_or(0);
        let quiet = Duration::from_secs(1).max(Duration::from_micros(2 * slowest));
        if Instant::now() > deadline || quiet_since.elapsed() >= quiet {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        let now = text.matches("change programmed").count();
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        }
    }
    let cpu = churn::cpu_time(pid)?.saturating_sub(cpu_before);
    let cpu_share = cpu.as_secs_f64() / wall.elapsed().as_secs_f64();
    let text = agent.log();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("change programmed"))
        .skip(before)
        .collect();
    let latency_us: Vec<u64> = lines.iter().filter_map(|l| latency_of(l).ok()).collect();
    let last_us = match lines.last() {
        Some(l) => rfc3339_us(l.split_whitespace().next().unwrap_or_default())?,
        None => bail!("no change programmed during the churn phase"),
    };
    // Seconds of the day are enough: the phase lasts seconds, within one day's stamps.
    let stamps: Vec<u64> = lines
        .iter()
        .filter_map(|l| time_of_day_us(l.split_whitespace().next()?))
        .collect();
    let longest_gap_ms =
        longest_gap_us(sending_from % DAY_US, &stamps, sent_done % DAY_US) as f64 / 1e3;
    let half = latency_us.len() / 2;
    let p99_of = |part: &[u64]| {
        let mut v = part.to_vec();
        v.sort_unstable();
        percentile(&v, 99.0)
    };
    Ok(Churn {
        halves_p99_us: (p99_of(&latency_us[..half]), p99_of(&latency_us[half..])),
        drain_ms: last_us.saturating_sub(sent_done) as f64 / 1e3,
        longest_gap_ms,
        repeated_after_stall_ms: None,
        sent,
        latency_us,
        cpu_share,
    })
}

/// Map capacities for `n` Services of [`ENDPOINTS`] endpoints when the agent's defaults (sized
/// for 10 000) are too small: powers of two above what they need.
fn capacity_args(n: u32) -> Vec<String> {
    if n <= 10_000 {
        return Vec::new();
    }
    let pow2 = |x: u32| x.next_power_of_two().to_string();
    vec![
        "--max-frontends".into(),
        pow2(n + 2),
        "--max-backends".into(),
        pow2(n * ENDPOINTS + 1),
        "--max-service-entries".into(),
        pow2(n * (ENDPOINTS + 1) + 1),
    ]
}

const DAY_US: u64 = 86_400 * 1_000_000;

/// The longest time without a snapshot while patches went out (`from`..`to`, µs of the day),
/// the stretches before the first and after the last one included: a watch that delivered
/// nothing for the whole phase has one snapshot, or none, and no gap between two.
fn longest_gap_us(from: u64, stamps: &[u64], to: u64) -> u64 {
    let mut edges = Vec::with_capacity(stamps.len() + 2);
    edges.push(from);
    edges.extend(stamps.iter().copied().filter(|t| (from..=to).contains(t)));
    edges.push(to);
    edges
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or(0)
}

/// µs since midnight of a tracing stamp (`2026-11-26T08:06:37.235166Z`).
fn time_of_day_us(stamp: &str) -> Option<u64> {
    let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: u64 = parts.next()?.parse().ok()?;
    let m: u64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some((h * 3600 + m * 60) * 1_000_000 + (s * 1e6).round() as u64)
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
    latency_of(line)
}

fn latency_of(line: &str) -> anyhow::Result<u64> {
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

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn capacities_grow_past_ten_thousand_services() {
        assert!(super::capacity_args(10_000).is_empty());
        assert_eq!(
            super::capacity_args(50_000),
            [
                "--max-frontends",
                "65536",
                "--max-backends",
                "524288",
                "--max-service-entries",
                "1048576"
            ]
        );
    }

    fn churn(gap_ms: f64) -> super::Churn {
        super::Churn {
            sent: super::churn::Sent {
                patches: 6000,
                failed: 0,
                elapsed: std::time::Duration::from_secs(30),
            },
            latency_us: vec![3_000; 100],
            drain_ms: 10.0,
            longest_gap_ms: gap_ms,
            repeated_after_stall_ms: None,
            halves_p99_us: (3_000.0, 3_000.0),
            cpu_share: 0.05,
        }
    }

    #[test]
    fn only_a_stalled_phase_is_repeated_and_the_repeat_says_so() {
        let mut runs = 0;
        let ok = super::churn_with_a_repeat(200, || {
            runs += 1;
            Ok(churn(40.0))
        })
        .unwrap();
        assert_eq!((runs, ok.repeated_after_stall_ms), (1, None));
        let mut gaps = vec![40.0, 19_974.0];
        let again = super::churn_with_a_repeat(200, || Ok(churn(gaps.pop().unwrap()))).unwrap();
        assert_eq!(again.repeated_after_stall_ms, Some(19_974.0));
        assert!(gaps.is_empty());
    }

    #[test]
    fn a_gap_of_500_patches_without_a_snapshot_is_a_watch_stall() {
        assert!(!churn(40.0).watch_stalled(200));
        assert!(!churn(2_400.0).watch_stalled(200));
        assert!(churn(2_600.0).watch_stalled(200));
        assert!(churn(600.0).watch_stalled(1_000));
    }

    #[test]
    fn the_longest_gap_counts_the_phase_edges() {
        assert_eq!(super::longest_gap_us(0, &[100, 150, 900], 1_000), 750);
        // One snapshot, or none, in the whole phase: the phase itself is the gap.
        assert_eq!(super::longest_gap_us(0, &[50], 20_000), 19_950);
        assert_eq!(super::longest_gap_us(0, &[], 20_000), 20_000);
        // Snapshots of the drain after the last patch are not in the phase.
        assert_eq!(super::longest_gap_us(0, &[400, 800, 5_000], 1_000), 400);
    }

    #[test]
    fn time_of_day_of_a_tracing_stamp() {
        let us = super::time_of_day_us("2026-12-05T12:11:47.511013Z");
        assert_eq!(us, Some(((12 * 3600 + 11 * 60 + 47) * 1_000_000) + 511_013));
        assert_eq!(super::time_of_day_us("not a stamp"), None);
    }
}
