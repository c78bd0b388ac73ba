//! `cargo xtask bench`: meshpath against the no-mesh path and kube-proxy-style iptables, side by
//! side in one run, driven by fortio. See report.rs's METHOD text (copied into every results.md)
//! for what exactly is measured, and scenario.rs for how each data path is set up.

mod callgrind;
mod fortio;
mod iptables;
mod jaeger;
mod kcost;
mod l7;
mod l7change;
mod l7checks;
mod l7extras;
mod l7report;
mod merge;
mod model;
mod obsreport;
pub(crate) mod proc;
mod report;
mod revproxy;
mod scenario;
mod stats;
mod stream;
mod svg;
pub mod sysinfo;
mod usage;
mod xnode;
mod xreport;
mod xtopo;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::paths::workspace_root;
use crate::test::{cargo, require_root};
use model::{Scenario, CORE, L7, LATENCY_CONNS, MAXQPS_CONNS, OBS};
use scenario::Failure;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Repeats of the scenario sequence (a, b, c, d, then the L7 ones); the tables show medians
    /// over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    /// Length of every fortio run and of the bulk stream, e.g. 5s, 1500ms, 1m.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Scenarios to run, comma-separated: a (direct), b (iptables), c (meshpath LB),
    /// d (meshpath LB + socket redirection); the L7 hop: l7-direct, l7-meshpath (meshpath's node
    /// proxy), l7-nginx, l7-haproxy (the "L7 hop" section; its ratios and added latency are
    /// against l7-direct). Observability cost: c-tcpm-off ((c) with the kernel's TCP metrics
    /// off), l7-trace1 and l7-trace100 (l7-meshpath exporting spans to a real Jaeger at 1 % and
    /// 100 % sampling), against c and l7-meshpath (obs.md, copied to observability-latest.md).
    /// Groups: core = a,b,c,d; l7 = the four L7 ones; obs = c, c-tcpm-off, l7-meshpath,
    /// l7-trace1, l7-trace100; all = core and l7. Ratios need a. A run of obs scenarios only
    /// leaves latest.md as it was. Cross-node (two nodes; xnode.md, copied to
    /// cross-node-latest.md; not in the default set): x-a (outside client → pod IP via node 1),
    /// x-b (NodePort, iptables DNAT + MASQUERADE), x-c (NodePort, meshpath's tc uplink path),
    /// x-pod (node-1 pod → pod IP), x-cip-ipt / x-cip-mp (node-1 pod → ClusterIP through
    /// iptables / meshpath); group xnode = all six. x-cip-mp-notc (x-cip-mp without the tc
    /// uplink programs) only when named.
    #[arg(long, value_delimiter = ',', default_value = "core,l7", value_parser = model::parse_picks)]
    pub scenarios: Vec<model::Picks>,
    /// How the fortio echo server listens: `wildcard` is fortio's (Go's) default dual-stack
    /// `[::]` socket, on which IPv4 connections are AF_INET6 sockets with v4-mapped addresses;
    /// `pod-ip` binds an AF_INET socket to the backend pod's address.
    #[arg(long, value_enum, default_value = "wildcard")]
    pub fortio_listen: fortio::Listen,
    /// Use the existing release binaries instead of building the eBPF object and
    /// `cargo build --release` first.
    #[arg(long)]
    pub no_build: bool,
    /// The meshpath binary to benchmark instead of target/release/meshpath, e.g. the
    /// profile-guided build of `cargo xtask pgo` (target/pgo/use/release/meshpath).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Directory for the result folders (relative paths are below the workspace root).
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// A sentence on the conditions of the run (e.g. a shared, busy machine), written into the
    /// observability results.
    #[arg(long)]
    pub note: Option<String>,
    /// Only the L7 rows: skip what the L7 section measures beside them once the repeats are
    /// done (the proxy's instructions per request under callgrind, and, without
    /// (d), the kernel programs' own cost).
    #[arg(long)]
    pub l7_rows_only: bool,
}

/// Which copy beside the run folders a run replaces: `latest.md` holds the kernel-path tables
/// (with the L7 section when both ran), `l7-latest.md` a run of the L7 hop alone; a run of the
/// observability rows only, or an interrupted one, replaces neither.
fn latest_copy(
    interrupted: bool,
    obs_only: bool,
    no_core: bool,
    has_l7: bool,
) -> Option<&'static str> {
    match (interrupted || obs_only, no_core, has_l7) {
        (true, _, _) => None,
        (false, true, true) => Some("l7-latest.md"),
        (false, true, false) => None,
        (false, false, _) => Some("latest.md"),
    }
}

/// `5s`, `1500ms`, `1m`, or plain seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    if secs < 0.5 {
        return Err("duration must be at least 500ms".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

impl BenchArgs {
    /// One repeat of the L7 proxy scenario with `agent`, already built (`cargo xtask pgo`'s
    /// training run).
    pub(crate) fn training(agent: PathBuf, duration: Duration, out: PathBuf) -> BenchArgs {
        BenchArgs {
            repeats: 1,
            duration,
            scenarios: vec![model::Picks(vec![Scenario::L7Meshpath])],
            fortio_listen: fortio::Listen::Wildcard,
            no_build: true,
            agent: Some(agent),
            out,
            note: Some("training run of `cargo xtask pgo` (instrumented agent)".into()),
            l7_rows_only: true,
        }
    }
}

/// Fixed cost of one scenario instance beyond its runs: node set-up and teardown, servers,
/// agent start, 1 s warm-up, process start per run. Measured on the 2-core dev VM.
const OVERHEAD_PER_SCENARIO_S: f64 = 2.5;

pub fn run(args: BenchArgs) -> Result<()> {
    require_root("the benchmark creates network namespaces, cgroups and iptables rules inside them, and loads eBPF programs")?;
    let mut scenarios: Vec<Scenario> = args.scenarios.iter().flat_map(|p| p.0.clone()).collect();
    scenarios.sort();
    scenarios.dedup();
    let fortio = fortio::find()?;
    if fortio.version != fortio::EXPECTED_VERSION {
        eprintln!(
            "bench: warning: fortio {} found at {}, scripts/setup.sh installs {}",
            fortio.version,
            fortio.path.display(),
            fortio::EXPECTED_VERSION
        );
    }
    if !args.no_build {
        crate::build_ebpf::run()?;
        cargo(&[
            "build",
            "--release",
            "-p",
            "meshpath",
            "-p",
            "meshpath-tests",
            "--bins",
        ])?;
    }
    let release = workspace_root().join("target/release");
    let meshpath = match &args.agent {
        Some(p) => std::path::absolute(p).with_context(|| format!("--agent {}", p.display()))?,
        None => release.join("meshpath"),
    };
    let testpod = release.join("mp-testpod");
    for b in [&meshpath, &testpod] {
        if !b.is_file() {
            bail!("{} missing: run without --no-build", b.display());
        }
    }
    // The harness finds its binaries through these; set before any thread exists.
    std::env::set_var("MESHPATH_BIN", &meshpath);
    std::env::set_var("MP_TESTPOD_BIN", &testpod);
    let agent_help = proc::output(&meshpath.to_string_lossy(), &["agent", "--help"])?;
    let has_redirect = agent_help.contains("--socket-redirect");

    let (folder, started) = sysinfo::utc_now();
    let meta = sysinfo::Meta {
        started_utc: started,
        kernel: sysinfo::kernel(),
        cpu_model: sysinfo::cpu_model(),
        cores: sysinfo::cores(),
        fortio_version: fortio.version.clone(),
        meshpath_commit: sysinfo::git_commit(),
        build_profile: match &args.agent {
            Some(_) => format!("release build; agent binary {}", meshpath.display()),
            None => "release build".into(),
        },
        repeats: args.repeats,
        duration_s: args.duration.as_secs_f64(),
        payload: report::payload_description(),
        agent_socket_redirect_flag: has_redirect,
        iptables_version: sysinfo::iptables_version(),
        fortio_server_listen: args.fortio_listen.describe(),
    };
    // Core scenarios add the bulk stream to the fortio runs; the L7 ones do not.
    let fortio_runs = (LATENCY_CONNS.len() + MAXQPS_CONNS.len()) as f64;
    let runs_per_repeat: f64 = scenarios
        .iter()
        .map(|s| {
            if s.is_l7() || s.is_xnode() {
                fortio_runs
            } else {
                fortio_runs + 1.0
            }
        })
        .sum();
    let estimate = f64::from(args.repeats)
        * (runs_per_repeat * args.duration.as_secs_f64()
            + scenarios.len() as f64 * OVERHEAD_PER_SCENARIO_S);
    eprintln!(
        "bench: {} repeats × scenarios {} ({:.0} runs of {:.1} s per repeat); estimated {:.0} min \
         {:.0} s (release build; kernel {}, {} cores)",
        args.repeats,
        scenarios
            .iter()
            .map(|s| s.key())
            .collect::<Vec<_>>()
            .join(","),
        runs_per_repeat,
        args.duration.as_secs_f64(),
        (estimate / 60.0).floor(),
        estimate % 60.0,
        meta.kernel,
        meta.cores
    );
    if !has_redirect && scenarios.contains(&Scenario::D) {
        eprintln!("bench: note: `meshpath agent --help` has no --socket-redirect; (d) will most likely be not available");
    }

    proc::install_interrupt_handler();
    let cfg = scenario::Config {
        fortio: &fortio,
        duration: args.duration,
        agent_has_redirect_flag: has_redirect,
        listen: args.fortio_listen,
    };
    let mut records = Vec::new();
    let mut evidence = Vec::new();
    let mut problems = Vec::new();
    let mut missing: BTreeMap<Scenario, String> = BTreeMap::new();
    // nginx / HAProxy missing: those scenarios are not available (the others still run).
    let l7_versions = revproxy::versions(&scenarios, &mut missing);
    let t0 = std::time::Instant::now();
    'repeats: for repeat in 1..=args.repeats {
        for &sc in &scenarios {
            if proc::check_interrupted().is_err() {
                problems.push("interrupted: results are partial".to_owned());
                break 'repeats;
            }
            if missing
                .get(&sc)
                .is_some_and(|m| m.starts_with("not available"))
            {
                continue;
            }
            eprintln!(
                "bench: [{:>4.0}s] repeat {repeat}/{}: ({}) {}",
                t0.elapsed().as_secs_f64(),
                args.repeats,
                sc.key(),
                sc.describe()
            );
            let result = if sc.is_l7() {
                l7::run(sc, repeat, &cfg)
            } else if sc.is_xnode() {
                xnode::run(sc, repeat, &cfg)
            } else {
                scenario::run(sc, repeat, &cfg)
            };
            match result {
                Ok(run) => {
                    for r in run.records.iter().filter(|r| r.error.is_some()) {
                        eprintln!(
                            "bench:   run failed: {:?} c={}: {}",
                            r.test,
                            r.connections,
                            r.error.as_deref().unwrap_or("")
                        );
                    }
                    records.extend(run.records);
                    evidence.push((repeat, run.evidence));
                    problems.extend(run.problems);
                }
                Err(Failure::Unavailable(why)) => {
                    eprintln!("bench:   ({}) not available: {why}", sc.key());
                    missing.insert(sc, format!("not available: {why}"));
                }
                Err(Failure::Failed(e)) => {
                    if proc::check_interrupted().is_err() {
                        problems.push("interrupted: results are partial".to_owned());
                        break 'repeats;
                    }
                    let msg = format!("({}) repeat {repeat} failed: {e:#}", sc.key());
                    eprintln!("bench:   {msg}");
                    problems.push(msg);
                }
            }
        }
    }
    for sc in CORE.into_iter().chain(L7) {
        if !scenarios.contains(&sc) {
            missing.insert(sc, "not run (not in --scenarios)".into());
        }
    }
    for &sc in &scenarios {
        if !missing.contains_key(&sc)
            && !records
                .iter()
                .any(|r| r.scenario == sc && r.error.is_none())
        {
            missing.insert(sc, "failed: no successful runs (see Problems)".into());
        }
    }

    let notes = report::redirect_notes(&evidence, args.fortio_listen);
    let obs = obsreport::ObsSection::build(&records, &scenarios, &evidence);
    // The observability variants have their own section only.
    let obs_only = |ev: &serde_json::Value| {
        OBS.iter()
            .any(|s| s.is_obs_only() && ev["scenario"] == s.key())
    };
    let evidence: Vec<_> = evidence
        .into_iter()
        .filter(|(_, ev)| !obs_only(ev))
        .collect();
    let (x_evidence, evidence): (Vec<_>, Vec<_>) = evidence
        .into_iter()
        .partition(|(_, ev)| ev["xnode"] == true);
    let xnode = xreport::XnodeSection::build(&records, &scenarios, x_evidence);
    let (l7_evidence, evidence): (Vec<_>, Vec<_>) =
        evidence.into_iter().partition(|(_, ev)| ev["l7"] == true);
    let (l7_scenarios, core): (Vec<Scenario>, Vec<Scenario>) = scenarios
        .iter()
        .filter(|s| !s.is_obs_only() && !s.is_xnode())
        .partition(|s| s.is_l7());
    let l7_section = (!l7_scenarios.is_empty()).then(|| {
        let l7_missing = missing
            .iter()
            .filter(|(s, _)| l7_scenarios.contains(s))
            .map(|(s, w)| (*s, w.clone()))
            .collect();
        let mut l7 = l7report::L7Section::build(
            &records,
            l7_scenarios,
            l7_missing,
            l7_evidence,
            l7_versions,
        );
        let extras = l7extras::measure(&scenarios, args.repeats, !args.l7_rows_only);
        l7.callgrind = extras.callgrind;
        l7.kernel_cost = extras.kernel_cost;
        l7
    });
    let rows = stats::rows();
    let table = stats::summarize(&rows, &records, &core);
    let checks = if core.is_empty() {
        Vec::new()
    } else {
        stats::targets(&rows, &table, &missing)
    };
    let rep = report::Report {
        meta: &meta,
        scenarios: &core,
        l7: l7_section.as_ref(),
        missing: &missing,
        rows: &rows,
        table: &table,
        checks: &checks,
        records: &records,
        evidence: &evidence,
        problems: &problems,
        notes: &notes,
    };
    let out_root = if args.out.is_absolute() {
        args.out.clone()
    } else {
        workspace_root().join(&args.out)
    };
    let dir = out_root.join(&folder);
    // An interrupted run still leaves its folder, but the latest copies keep the last complete
    // run of their kind.
    let interrupted = proc::check_interrupted().is_err();
    let obs_run = scenarios.iter().all(|s| OBS.contains(s));
    let latest_name = latest_copy(interrupted, obs_run, core.is_empty(), l7_section.is_some());
    rep.write(&dir, latest_name)
        .context("writing the results")?;
    if let Some(o) = &obs {
        o.write(&dir, &out_root, &meta, args.note.as_deref(), !interrupted)?;
    }
    if let Some(x) = &xnode {
        x.write(&dir, &out_root, &meta, args.note.as_deref(), !interrupted)?;
    }

    let mut summary = String::new();
    summary.push_str(&format!(
        "\nmeshpath bench, {} (kernel {}, {} × {} cores, fortio {} echo server on {}, meshpath {} release, {} repeats × {} s)\n\n",
        meta.started_utc, meta.kernel, meta.cpu_model, meta.cores, meta.fortio_version,
        meta.fortio_server_listen, meta.meshpath_commit, meta.repeats, meta.duration_s
    ));
    if !core.is_empty() {
        summary.push_str(&rep.table_md());
    }
    for (sc, why) in missing.iter().filter(|(s, _)| scenarios.contains(s)) {
        summary.push_str(&format!("\n({}) {why}", sc.key()));
    }
    if !core.is_empty() {
        summary.push_str("\n\nTargets:\n");
        for c in &checks {
            summary.push_str(&c.line());
            summary.push('\n');
        }
        for c in kcost::checks(&evidence) {
            summary.push_str(&c);
            summary.push('\n');
        }
    }
    if let Some(l7) = &l7_section {
        summary.push_str(&l7.summary());
    }
    if let Some(o) = &obs {
        summary.push_str("\nObservability cost (obs.md):\n");
        summary.push_str(&o.checks_text());
    }
    if let Some(x) = &xnode {
        summary.push_str("\nCross-node rows (xnode.md):\n\n");
        summary.push_str(&x.tables_md());
        summary.push_str(&x.checks_text());
    }
    for n in &notes {
        summary.push_str(&format!("NOTE  {n}\n"));
    }
    for p in &problems {
        summary.push_str(&format!("PROBLEM  {p}\n"));
    }
    let latest = match latest_name {
        None => String::new(),
        Some(name) => format!(" (copied to {})", out_root.join(name).display()),
    };
    summary.push_str(&format!(
        "\nresults: {}: results.md{latest}, results.json{}; took {:.0} s\n",
        dir.display(),
        [
            (!core.is_empty(), "latency.svg"),
            (l7_section.is_some(), "latency-l7.svg"),
            (obs.is_some(), "obs.md"),
            (xnode.is_some(), "xnode.md, xnode.json"),
        ]
        .iter()
        .filter(|(ran, _)| *ran)
        .fold(String::new(), |s, (_, f)| s + ", " + f),
        t0.elapsed().as_secs_f64()
    ));
    #[allow(clippy::print_stdout)] // the table is the command's output
    {
        print!("{summary}");
    }
    if !problems.is_empty() {
        bail!(
            "{} problem(s) during the benchmark (listed above and in results.md)",
            problems.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{latest_copy, parse_duration};
    use std::time::Duration;

    #[test]
    fn an_l7_run_keeps_the_kernel_figures() {
        // (interrupted, obs only, no core scenario, L7 section)
        assert_eq!(latest_copy(false, false, true, true), Some("l7-latest.md"));
        assert_eq!(latest_copy(false, false, false, false), Some("latest.md"));
        assert_eq!(latest_copy(false, false, false, true), Some("latest.md"));
        assert_eq!(latest_copy(true, false, true, true), None);
        assert_eq!(latest_copy(false, true, false, true), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("100ms").is_err());
    }
}
