//! One L7-hop scenario of one repeat: the fortio echo server in pod 0, the client in pod 1, and
//! between them nothing (l7-direct), meshpath's node proxy (l7-meshpath), nginx or HAProxy.
//! Same fresh-node-per-instance rule, warm-up and fortio runs as scenario.rs (latency at 1000
//! qps, c = 1/4/16/64; max qps, c = 1/16/64), no bulk stream; plus the proxy's CPU per run and
//! its RSS (sampled), and evidence that the traffic went through the proxy.
//!
//! meshpath's proxy runs inside the agent process (runtime threads `meshpath-proxy`), so its CPU
//! and RSS are the agent's: the whole process, nothing subtracted. Under load the agent does
//! nothing else (no manifest changes), so its CPU is the proxy's. After those runs, l7-meshpath
//! also measures a config change under load (`l7change.rs`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meshpath_tests::agent::{self, Agent};
use meshpath_tests::manifests::{self, Ep};
use meshpath_tests::Node;
use serde_json::json;

use super::fortio::{self, Load};
use super::l7change;
use super::model::{
    ProxyUsage, RunRecord, Scenario, Test, LATENCY_CONNS, LATENCY_QPS, MAXQPS_CONNS,
};
use super::proc;
use super::revproxy::{Kind, RevProxy, GATEWAY};
use super::scenario::{loadavg, Config, Failure, ScenarioRun};
use super::usage::{self, RssSampler};

const HTTP_SVC: &str = "bench-http";
const HTTP_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const HTTP_SVC_PORT: u16 = 80;
const WARMUP: Duration = Duration::from_secs(1);
/// The names of meshpath's node proxy worker threads start so (`meshpath-proxy-<i>`).
const PROXY_THREADS: &str = "meshpath-proxy";

/// The hop under test; dropping it stops whatever was started.
enum Hop {
    Direct,
    Meshpath {
        agent: Agent,
        pid: u32,
        backend: String,
        /// The span collector of a tracing scenario (stopped after the agent).
        jaeger: Option<super::jaeger::Jaeger>,
    },
    Rev(RevProxy),
}

impl Hop {
    fn pids(&self) -> Vec<u32> {
        match self {
            Hop::Direct => Vec::new(),
            Hop::Meshpath { pid, .. } => vec![*pid],
            Hop::Rev(r) => r.pids(),
        }
    }
}

pub fn run(sc: Scenario, repeat: u32, cfg: &Config) -> Result<ScenarioRun, Failure> {
    let load_before = loadavg();
    let node = super::scenario::bench_node()?;
    let (backend, client) = (node.pod(0), node.pod(1));
    fortio::spawn_server(&node, backend, cfg.fortio, cfg.listen)?;
    let upstream = SocketAddrV4::new(backend.ip(), fortio::HTTP_PORT);

    let (hop, target) = set_up(sc, &node, upstream)?;
    let url = format!("http://{target}/echo");
    let warm = Load {
        url: &url,
        qps: LATENCY_QPS,
        connections: 4,
        duration: WARMUP,
    };
    fortio::load(client, cfg.fortio, &warm)
        .with_context(|| format!("warm-up through {url} (is the {} path working?)", sc.key()))?;

    let pids = hop.pids();
    let sampler = if pids.is_empty() {
        None
    } else {
        Some(RssSampler::start(pids.clone())?)
    };
    let rss_idle = usage::sum_status_kib(&pids, "VmRSS");
    let connects_before = service_connects(&hop);
    let threads_before = proxy_thread_cpu(&hop);
    let cpu_before = usage::cpu_seconds(&pids);
    let log_len_before = agent_log(&hop).len();

    let mut records = Vec::new();
    let runs = LATENCY_CONNS
        .iter()
        .map(|&c| (Test::Latency, LATENCY_QPS, c))
        .chain(MAXQPS_CONNS.iter().map(|&c| (Test::MaxQps, 0, c)));
    for (test, qps, c) in runs {
        proc::check_interrupted()?;
        let l = Load {
            url: &url,
            qps,
            connections: c,
            duration: cfg.duration,
        };
        let mut rec = RunRecord::new(repeat, sc, test, c);
        if let Some(s) = &sampler {
            s.take_peak();
        }
        let opens0 = usage::passive_opens(backend.netns_name());
        let cpu0 = usage::cpu_seconds(&pids);
        let res = fortio::load(client, cfg.fortio, &l);
        let cpu_s = usage::cpu_seconds(&pids) - cpu0;
        let opens = usage::passive_opens(backend.netns_name())
            .zip(opens0)
            .map(|(b, a)| b.saturating_sub(a));
        match res {
            Ok(r) => {
                if test == Test::Latency {
                    (rec.p50_us, rec.p90_us, rec.p99_us) =
                        (Some(r.p50_us), Some(r.p90_us), Some(r.p99_us));
                }
                rec.qps = Some(r.actual_qps);
                (rec.ok_requests, rec.failed_requests) = (r.ok, r.failed);
                rec.raw = r.raw;
            }
            Err(e) => {
                proc::check_interrupted()?;
                rec.error = Some(format!("{e:#}"));
            }
        }
        if let Some(s) = &sampler {
            let requests = rec.ok_requests + rec.failed_requests;
            rec.proxy = Some(ProxyUsage {
                cpu_s,
                requests,
                cpu_pct_per_1000_rps: (requests > 0)
                    .then(|| cpu_s / requests as f64 * 1000.0 * 100.0),
                rss_peak_kib: s.take_peak(),
                upstream_opens: opens,
            });
        }
        // A proxy that died mid-run would make every later run fail the same way: stop here.
        if let Some(why) = hop_died(&hop) {
            records.push(rec);
            return Err(Failure::Failed(anyhow::anyhow!("{why}")));
        }
        records.push(rec);
    }

    let cpu_total = usage::cpu_seconds(&pids) - cpu_before;
    let rss_after = usage::sum_status_kib(&pids, "VmRSS");
    // VmRSS is RssAnon + RssFile + RssShmem: the file-backed part is the binary's and the
    // libraries' pages that the process has touched, which the kernel can take back unwritten.
    let (anon_after, file_after) = (
        usage::sum_status_kib(&pids, "RssAnon"),
        usage::sum_status_kib(&pids, "RssFile"),
    );
    let hwm = usage::sum_status_kib(&pids, "VmHWM");
    let log_text = agent_log(&hop);
    let new_log = log_text.get(log_len_before..).unwrap_or("");
    let mut evidence = json!({
        "scenario": sc,
        "l7": true,
        "target_url": url,
        "loadavg_1m": [load_before, loadavg()],
    });
    if let Some(s) = &sampler {
        evidence["proxy"] = json!({
            "pids": pids,
            "rss_idle_kib": rss_idle,
            "rss_peak_kib": s.overall_peak(),
            "rss_after_kib": rss_after,
            "rss_after_anon_kib": anon_after,
            "rss_after_file_kib": file_after,
            "vm_hwm_kib": hwm,
            "cpu_s_measurements": cpu_total,
        });
    }
    if !matches!(hop, Hop::Direct) {
        evidence["upstream_opens_per_run"] = json!(records
            .iter()
            .map(|r| r.proxy.as_ref().and_then(|p| p.upstream_opens))
            .collect::<Vec<_>>());
        // Keep-alive evidence: the proxy's upstream connections still open after the runs.
        evidence["upstream_conns_established"] =
            json!(usage::established_to(node.node_netns_name(), upstream));
    }
    match &hop {
        Hop::Meshpath { backend, .. } => {
            evidence["steered_backend"] = json!(backend);
            evidence["service_connects"] =
                json!(service_connects(&hop).saturating_sub(connects_before));
            evidence["proxy_threads_cpu_s"] = json!(proxy_thread_cpu(&hop) - threads_before);
            // The proxy logs failed upstream requests, retries and broken connections at
            // debug (the harness runs the agent with meshpath=debug).
            let notable: Vec<&str> = new_log
                .lines()
                .filter(|l| {
                    l.contains("WARN") || l.contains("ERROR") || l.contains("meshpath::proxy")
                })
                .collect();
            evidence["agent_log_lines"] = json!(notable.len());
            evidence["agent_log_first"] = json!(notable.iter().take(5).collect::<Vec<_>>());
        }
        Hop::Rev(r) => {
            evidence["listen"] = json!(r.listen.to_string());
            evidence["log_tail"] = json!(r.log_tail());
        }
        Hop::Direct => {}
    }
    // After the measured runs and their figures, so its manifest rewrites stay out of them.
    let change = (sc == Scenario::L7Meshpath).then(|| {
        let dir = node.work_dir().join("manifests");
        let write = |i: u32| {
            let vs = match i {
                0 => virtual_service(HTTP_SVC),
                i => l7change::virtual_service(HTTP_SVC, i),
            };
            l7change::write_manifests(&dir, &bench_yaml(upstream, vs))
        };
        let cpu_s = || (usage::cpu_seconds(&pids), proxy_thread_cpu(&hop));
        let log = || agent_log(&hop);
        let agent = l7change::AgentProbe {
            cpu_s: &cpu_s,
            log: &log,
        };
        l7change::measure(client, cfg.fortio, &url, cfg.duration, &write, &agent)
    });
    drop(sampler);
    let mut problems = Vec::new();
    match change {
        Some(Ok(v)) => evidence["config_change"] = v,
        Some(Err(e)) => problems.push(format!(
            "({}) repeat {repeat}: config change under load: {e:#}",
            sc.key()
        )),
        None => {}
    }
    if let Err(e) = tear_down(hop, &node) {
        problems.push(format!("({}) repeat {repeat}: cleanup: {e:#}", sc.key()));
    }
    Ok(ScenarioRun {
        records,
        evidence,
        problems,
    })
}

/// Start the hop; returns it and the address the client dials.
fn set_up(sc: Scenario, node: &Node, upstream: SocketAddrV4) -> Result<(Hop, SocketAddrV4)> {
    match sc {
        Scenario::L7Meshpath | Scenario::L7Trace1 | Scenario::L7Trace100 => {
            let dir = node.work_dir().join("manifests");
            std::fs::create_dir_all(&dir).context("creating the manifests dir")?;
            l7change::write_manifests(&dir, &bench_yaml(upstream, virtual_service(HTTP_SVC)))?;
            let netns = format!("/var/run/netns/{}", node.node_netns_name());
            let gw = GATEWAY.to_string();
            let mut extra = vec!["--proxy-ip", &gw, "--proxy-netns", &netns];
            let jaeger = match sc.trace_sampling() {
                Some(_) => Some(super::jaeger::Jaeger::start(
                    &node.work_dir().join("jaeger"),
                )?),
                None => None,
            };
            let (collector, sampling);
            if let (Some(j), Some(pct)) = (&jaeger, sc.trace_sampling()) {
                collector = format!("http://{}", j.zipkin);
                sampling = pct.to_string();
                extra.extend([
                    "--trace-collector",
                    &collector,
                    "--trace-sampling",
                    &sampling,
                ]);
            }
            let log = node.work_dir().join("agent.log");
            let agent = Agent::start(&dir, node.cgroup_path(), node.pin_dir(), &log, &extra)
                .context("starting the meshpath agent with the node proxy")?;
            let backend = wait_steered(&agent)?;
            let pin = node.pin_dir().to_string_lossy().into_owned();
            let bin = agent::meshpath_bin()?;
            let pid = usage::find_process(|argv| {
                argv.first().is_some_and(|a| std::path::Path::new(a) == bin)
                    && argv.get(1).is_some_and(|a| a == "agent")
                    && argv.contains(&pin)
            })
            .context("finding the agent's pid in /proc")?;
            let target = SocketAddrV4::new(HTTP_CLUSTER_IP, HTTP_SVC_PORT);
            Ok((
                Hop::Meshpath {
                    agent,
                    pid,
                    backend,
                    jaeger,
                },
                target,
            ))
        }
        Scenario::L7Nginx | Scenario::L7Haproxy => {
            let kind = if sc == Scenario::L7Nginx {
                Kind::Nginx
            } else {
                Kind::Haproxy
            };
            let rp = RevProxy::start(kind, node.node_netns_name(), node.work_dir(), upstream)?;
            let target = rp.listen;
            Ok((Hop::Rev(rp), target))
        }
        _ => Ok((Hop::Direct, upstream)),
    }
}

/// The bench's manifests: the service, its one endpoint (the fortio server) and `vs`.
fn bench_yaml(upstream: SocketAddrV4, vs: String) -> String {
    manifests::docs(&[
        manifests::service(
            HTTP_SVC,
            &HTTP_CLUSTER_IP.to_string(),
            HTTP_SVC_PORT,
            &fortio::HTTP_PORT.to_string(),
            "TCP",
            "",
        ),
        manifests::endpoint_slice(
            HTTP_SVC,
            fortio::HTTP_PORT,
            "TCP",
            &[Ep::ready(*upstream.ip())],
        ),
        vs,
    ])
}

/// The VirtualService that makes the service L7 (one http route to itself: the minimal rule
/// that steers it to the proxy and routes every request unchanged).
pub fn virtual_service(host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: {host}\n  \
         namespace: default\nspec:\n  hosts: [{host}]\n  http:\n  - route:\n    - destination:\n        \
         host: {host}\n"
    )
}

/// Wait until `meshpath status` shows the service steered to the proxy's listener (10.244.0.1:151xx)
/// with the proxy listening there; returns the listener. (A steered service keeps its endpoints as
/// kernel backends, for the fallback while no proxy listens.)
fn wait_steered(agent: &Agent) -> Result<String> {
    let start = Instant::now();
    let name = format!("default/{HTTP_SVC}");
    loop {
        let st = agent.status()?;
        if agent::steered_to_proxy(&st, &name) {
            let listener = agent::service(&st, &name)
                .and_then(|s| s["proxy"]["listener"].as_str())
                .unwrap_or_default();
            return Ok(listener.to_owned());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!(
                "{name} not steered to the proxy within 10 s (status {}); agent log:\n{}",
                agent::service(&st, &name).map_or_else(String::new, |s| s.to_string()),
                proc::tail(&agent.log(), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn service_connects(hop: &Hop) -> u64 {
    let Hop::Meshpath { agent: a, .. } = hop else {
        return 0;
    };
    a.status()
        .ok()
        .and_then(|st| agent::service(&st, &format!("default/{HTTP_SVC}"))?["connects"].as_u64())
        .unwrap_or(0)
}

fn proxy_thread_cpu(hop: &Hop) -> f64 {
    match hop {
        Hop::Meshpath { pid, .. } => usage::thread_cpu_seconds(*pid, PROXY_THREADS),
        _ => 0.0,
    }
}

fn agent_log(hop: &Hop) -> String {
    match hop {
        Hop::Meshpath { agent: a, .. } => a.log(),
        _ => String::new(),
    }
}

/// Why the proxy is gone, if it is.
fn hop_died(hop: &Hop) -> Option<String> {
    let alive = usage::alive;
    match hop {
        Hop::Direct => None,
        Hop::Meshpath { agent: a, pid, .. } => (!alive(*pid)).then(|| {
            format!(
                "the meshpath agent (node proxy) exited during the runs; log:\n{}",
                proc::tail(&a.log(), 30)
            )
        }),
        Hop::Rev(r) => (!alive(r.pid())).then(|| {
            let (name, pid) = (r.name(), r.pid());
            format!(
                "{name} (pid {pid}) exited during the runs; log:\n{}",
                r.log_tail()
            )
        }),
    }
}

fn tear_down(hop: Hop, node: &Node) -> Result<()> {
    match hop {
        Hop::Direct => Ok(()),
        Hop::Rev(mut r) => r.stop(),
        Hop::Meshpath {
            agent: mut a,
            jaeger,
            ..
        } => {
            a.stop()?;
            drop(jaeger);
            let bin = agent::meshpath_bin()?;
            let pin = node.pin_dir().to_string_lossy().into_owned();
            proc::output(&bin.to_string_lossy(), &["cleanup", "--pin-dir", &pin]).map(|_| ())
        }
    }
}
