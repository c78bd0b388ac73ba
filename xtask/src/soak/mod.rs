//! `cargo xtask soak`: meshpath under sustained change. fortio loads a kernel-path Service and
//! an L7 Service (steered to the node proxy), each over keep-alive connections and with a new
//! connection per request, for the whole run, while
//! - both Services' endpoints change every second (ready, not ready, removed, back);
//! - web's VirtualService and DestinationRule are edited in turn every few seconds (retries, a
//!   fault abort, matches with rewrites and header operations, a weighted split; four load
//!   balancers);
//! - the agent is stopped (SIGTERM) and started again every two minutes.
//!
//! Reported (stdout and bench-results/soak-latest.md): requests and failures by kind (only the
//! fault the rule injects is expected), the agent's RSS and open files over time, and the entry
//! counts of every pinned BPF map at the start and after the load, with the manifests back as
//! they started. The command fails when a request fails for another reason, a connect is
//! refused, or a map does not return to its starting count.
//!
//! The set-up is the privileged tests' node (tests/harness): pods in network namespaces, the
//! agent on a manifests directory (the edits are file writes, as `kubectl apply` would be
//! watch events).

mod objects;
mod report;
mod sample;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meshpath_tests::agent::steered_to_proxy;
use meshpath_tests::fortio::{Load, LoadReport, Running};
use meshpath_tests::{Cluster, Proxy, Source};

use crate::bench::proc::{check_interrupted, install_interrupt_handler};
use crate::paths::{debug_bin, workspace_root};
use crate::test::{cargo, require_root};
use objects::{PLAIN, WEB};
use report::{Events, Soak};
use sample::{map_entries, proc_sample, ProcSample};

#[derive(clap::Args)]
pub struct SoakArgs {
    /// How long the load runs, e.g. `10m`, `90s`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Restart the agent this often.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub restart_every: Duration,
    /// Edit web's VirtualService and DestinationRule (in turn) this often.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub edit_every: Duration,
    /// Requests per second of each of the four loads.
    #[arg(long, default_value_t = 100)]
    pub qps: u32,
    /// Use the existing debug binaries.
    #[arg(long)]
    pub no_build: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("unit of {s:?} is not s, m or h")),
    }
}

/// Pod 0 runs the loads; 1 and 2 serve `plain`, 3 and 4 serve `web`.
const PODS: usize = 5;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    require_root("the soak creates network namespaces and cgroups and loads eBPF programs")?;
    if !args.no_build {
        crate::build_ebpf::run()?;
        cargo(&["build", "-p", "meshpath", "-p", "meshpath-tests", "--bins"])?;
    }
    // The harness finds the binaries through these (edition 2021: set_var is safe; one thread).
    std::env::set_var("MESHPATH_BIN", debug_bin("meshpath"));
    std::env::set_var("MP_TESTPOD_BIN", debug_bin("mp-testpod"));
    install_interrupt_handler();

    let mut c = Cluster::with_proxy(PODS, |_| Vec::new());
    for i in 1..PODS {
        c.node.spawn_fortio_server(i).context("fortio server")?;
    }
    let ip = |c: &Cluster, i: usize| c.node.pod(i).ip();
    let plain_pods = (ip(&c, 1), ip(&c, 2));
    let web_pods = (ip(&c, 3), ip(&c, 4));
    for (file, text) in objects::baseline(plain_pods, web_pods) {
        c.write(file, &text);
    }
    c.wait_status(
        "web steered, plain on the kernel path",
        Duration::from_secs(20),
        |s| {
            steered_to_proxy(s, "default/web:")
                && meshpath_tests::agent::service(s, "default/plain:").is_some()
        },
    );
    let maps_before = map_entries(c.node.pin_dir())?;
    let counters_before = c.status()["counters"].clone();

    let loads: Vec<Running> = [(PLAIN, true), (PLAIN, false), (WEB, true), (WEB, false)]
        .into_iter()
        .map(|(vip, keepalive)| {
            c.node.start_fortio_load(
                0,
                &Load {
                    url: format!("http://{vip}:80/echo"),
                    qps: args.qps,
                    connections: 2,
                    duration: args.duration,
                    requests: None,
                    keepalive,
                },
            )
        })
        .collect::<anyhow::Result<_>>()?;
    println!(
        "soak: {:?} of load on plain ({PLAIN}, kernel path) and web ({WEB}, L7); endpoints change every second, an Istio object every {:?}, the agent restarts every {:?}",
        args.duration, args.edit_every, args.restart_every
    );

    let t0 = Instant::now();
    let mut ev = Events::default();
    let mut samples: Vec<ProcSample> = Vec::new();
    let mut generation = 0u32;
    let mut next_churn = Duration::from_secs(1);
    let mut next_edit = args.edit_every;
    let mut next_restart = args.restart_every;
    let mut next_sample = Duration::ZERO;
    let mut agent_logs = Vec::new();
    while t0.elapsed() < args.duration {
        check_interrupted()?;
        let now = t0.elapsed();
        if now >= next_sample {
            let pid = c.agent.pid().context("agent pid")?;
            samples.push(proc_sample(pid, now.as_secs(), generation)?);
            next_sample += SAMPLE_EVERY;
        }
        if now >= next_churn {
            ev.churns += 1;
            c.write(
                "plain-eps.yaml",
                &objects::endpoints("plain", ev.churns, plain_pods.0, plain_pods.1),
            );
            c.write(
                "web-eps.yaml",
                &objects::endpoints("web", ev.churns + 1, web_pods.0, web_pods.1),
            );
            next_churn += Duration::from_secs(1);
        }
        if now >= next_edit {
            // VirtualService and DestinationRule in turn.
            if (ev.vs_edits + ev.dr_edits) % 2 == 0 {
                ev.vs_edits += 1;
                c.write("web-vs.yaml", &objects::virtual_service(ev.vs_edits));
            } else {
                ev.dr_edits += 1;
                c.write("web-dr.yaml", &objects::destination_rule(ev.dr_edits));
            }
            next_edit += args.edit_every;
        }
        if now >= next_restart && now + Duration::from_secs(15) < args.duration {
            let pid = c.agent.pid().context("agent pid")?;
            samples.push(proc_sample(pid, now.as_secs(), generation)?);
            agent_logs.push(c.agent.log());
            let down = Instant::now();
            c.agent.stop().context("SIGTERM to the agent")?;
            c.agent = c
                .node
                .start_agent(Source::Manifests(&c.manifests), Proxy::On, &[])
                .context("restarting the agent")?;
            ev.restarts.push((now.as_secs(), down.elapsed()));
            generation += 1;
            println!(
                "soak: {:>4} s: agent restarted ({:.1?} from SIGTERM to programmed)",
                now.as_secs(),
                down.elapsed()
            );
            next_restart += args.restart_every;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = c.agent.pid().context("agent pid")?;
    samples.push(proc_sample(pid, t0.elapsed().as_secs(), generation)?);
    let reports: Vec<LoadReport> = loads
        .into_iter()
        .map(Running::finish)
        .collect::<anyhow::Result<_>>()?;

    // Back to the starting manifests, and one more agent restart: it closes the proxy's idle
    // upstream connections (the load's own connections closed with fortio), so every connection
    // the maps tracked is gone and they must return to their starting counts.
    for (file, text) in objects::baseline(plain_pods, web_pods) {
        c.write(file, &text);
    }
    agent_logs.push(c.agent.log());
    c.agent.stop().context("SIGTERM to the agent")?;
    c.agent = c
        .node
        .start_agent(Source::Manifests(&c.manifests), Proxy::On, &[])
        .context("restarting the agent")?;
    let maps_after = settle_maps(&c, &maps_before)?;
    // What a map that did not return holds, for the report.
    let leftovers: Vec<(String, String)> = report::maps_back(&maps_before, &maps_after)
        .into_iter()
        .map(|(m, _, _)| {
            let pin = c.node.pin_dir().join(&m);
            let dump = std::process::Command::new("bpftool")
                .args(["map", "dump", "pinned"])
                .arg(&pin)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| e.to_string());
            let head: Vec<&str> = dump.lines().take(60).collect();
            (m, head.join("\n"))
        })
        .collect();
    let counters_after = c.status()["counters"].clone();
    agent_logs.push(c.agent.log());
    let counter_delta = |name: &str| {
        let get = |v: &serde_json::Value| v[name].as_u64().unwrap_or(0);
        get(&counters_after).saturating_sub(get(&counters_before))
    };

    let soak = Soak {
        args: &args,
        reports,
        events: ev,
        samples,
        maps_before,
        maps_after,
        leftovers,
        fallback: counter_delta("proxy_fallback"),
        agent_errors: agent_logs
            .iter()
            .flat_map(|l| l.lines())
            .filter(|l| l.contains(" ERROR ") || l.contains("panicked"))
            .map(str::to_owned)
            .collect(),
    };
    let md = soak.markdown();
    println!("\n{md}");
    let out = workspace_root().join("bench-results/soak-latest.md");
    std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    println!("soak: written to {}", out.display());
    drop(c);
    let problems = soak.problems();
    if !problems.is_empty() {
        bail!("soak failed:\n- {}", problems.join("\n- "));
    }
    Ok(())
}

/// The map counts once they equal `before` (new connections' entries age out), or the last
/// counts after 30 s.
fn settle_maps(
    c: &Cluster,
    before: &std::collections::BTreeMap<String, u64>,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = map_entries(c.node.pin_dir())?;
        if report::maps_back(before, &now).is_empty() || Instant::now() > deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
