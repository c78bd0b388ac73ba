//! One scenario of one repeat: a fresh node, the servers, the data path under test, the
//! measurements, evidence that the traffic took that path, and cleanup.
//!
//! Every scenario instance gets its own `Node` (fresh namespaces, cgroups, pin dir): no state
//! (conntrack entries, attached programs, sockets in TIME_WAIT, leftover rules) leaks from one
//! scenario into the next, and whatever a failed scenario leaves is removed with its node.
//!
//! Layout: pod 0 is the backend (fortio echo server, stream server), pod 1 the client. One backend
//! only, so the direct scenario (a) and the service scenarios reach the very same server and
//! differ only in how the ClusterIP is resolved.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, Result};
use meshpath_tests::agent::{self, Agent};
use meshpath_tests::manifests::{self, Ep};
use meshpath_tests::{Node, Pod};
use serde_json::{json, Map, Value};

use super::fortio::{self, Fortio, Load};
use super::iptables::{self, KubeProxyRules};
use super::model::{RunRecord, Scenario, Test, LATENCY_CONNS, LATENCY_QPS, MAXQPS_CONNS};
use super::proc;
use super::stream;

const HTTP_SVC: &str = "bench-http";
const HTTP_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const HTTP_SVC_PORT: u16 = 80;
const STREAM_SVC: &str = "bench-stream";
const STREAM_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
/// The harness's pod network lies inside this, as a cluster CIDR would (kube-proxy uses it to
/// decide which service traffic to masquerade: none of ours).
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Unrecorded fortio run before the measurements: checks the path end to end and warms caches,
/// conntrack and the CPU frequency.
pub(super) const WARMUP: Duration = Duration::from_secs(1);

/// What is fixed for the whole benchmark.
pub struct Config<'a> {
    pub fortio: &'a Fortio,
    pub duration: Duration,
    /// Whether this meshpath build knows `--socket-redirect` (decides how (c) is started).
    pub agent_has_redirect_flag: bool,
    pub listen: fortio::Listen,
}

/// Why a scenario produced no results.
pub enum Failure {
    /// The path cannot be set up with this build (scenario (d) without redirection support).
    Unavailable(String),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Failed(e)
    }
}

/// The outcome of one scenario instance.
pub struct ScenarioRun {
    pub records: Vec<RunRecord>,
    /// Proof of the path taken: DNAT hits, meshpath counters; deltas over the fortio runs and over
    /// the stream.
    pub evidence: Value,
    /// Problems that did not invalidate the measurements (e.g. a cleanup error).
    pub problems: Vec<String>,
}

/// The set-up data path; dropping it undoes it (agent stopped, rules removed).
enum DataPath {
    Direct,
    Iptables(KubeProxyRules),
    Meshpath(Agent),
}

/// A two-pod node configured alike for every scenario: it forwards (needed for DNAT in (b)) and
/// has bridge-nf-call-iptables on (the kernel default for a new namespace, set explicitly so all
/// scenarios agree).
pub fn bench_node() -> anyhow::Result<Node> {
    let node = Node::new(2).context("creating the bench node")?;
    proc::output(
        "ip",
        &[
            "netns",
            "exec",
            node.node_netns_name(),
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.bridge.bridge-nf-call-iptables=1",
        ],
    )
    .context("node netns sysctls")?;
    Ok(node)
}

pub fn run(sc: Scenario, repeat: u32, cfg: &Config) -> Result<ScenarioRun, Failure> {
    let load_before = loadavg();
    let node = bench_node()?;
    let (backend, client) = (node.pod(0), node.pod(1));
    fortio::spawn_server(&node, backend, cfg.fortio, cfg.listen)?;
    stream::spawn_server(&node, backend)?;
    if sc == Scenario::E {
        // A process that outlives every fortio run, so the client pod stays a pod to the agent.
        stream::spawn_server_logged(&node, client, "client-pod-holder.log")?;
    }

    let (http_addr, stream_addr) = match sc {
        Scenario::A => (
            SocketAddrV4::new(backend.ip(), fortio::HTTP_PORT),
            SocketAddrV4::new(backend.ip(), stream::PORT),
        ),
        _ => (
            SocketAddrV4::new(HTTP_CLUSTER_IP, HTTP_SVC_PORT),
            SocketAddrV4::new(STREAM_CLUSTER_IP, stream::PORT),
        ),
    };
    let path = set_up_path(sc, &node, backend.ip(), cfg)?;
    let before = path_counters(&path)?;

    let url = format!("http://{http_addr}/echo");
    let warm = Load {
        url: &url,
        qps: LATENCY_QPS,
        connections: 4,
        duration: WARMUP,
    };
    fortio::load(client, cfg.fortio, &warm)
        .with_context(|| format!("warm-up through {url} (is the {} path working?)", sc.key()))?;

    let mut records = Vec::new();
    for c in LATENCY_CONNS {
        let l = Load {
            url: &url,
            qps: LATENCY_QPS,
            connections: c,
            duration: cfg.duration,
        };
        records.push(fortio_run(sc, repeat, Test::Latency, client, cfg, &l)?);
    }
    for c in MAXQPS_CONNS {
        let l = Load {
            url: &url,
            qps: 0,
            connections: c,
            duration: cfg.duration,
        };
        records.push(fortio_run(sc, repeat, Test::MaxQps, client, cfg, &l)?);
    }
    proc::check_interrupted()?;
    let mid = path_counters(&path)?;
    let mut rec = RunRecord::new(repeat, sc, Test::Stream, 1);
    match stream::run(client, SocketAddr::V4(stream_addr), cfg.duration) {
        Ok(r) => {
            rec.bytes_per_sec = Some(r.bytes_per_sec);
            rec.raw = r.raw;
        }
        Err(e) => rec.error = Some(format!("{e:#}")),
    }
    records.push(rec);

    let after = path_counters(&path)?;
    // The programs' own cost, last: its short connections must not change the runs above.
    let kernel_cost = match path {
        DataPath::Meshpath(_) => super::kcost::measure(&node, 1, &url),
        _ => Value::Null,
    };
    // Per phase, so e.g. a redirect that works for the stream but not for fortio's connections
    // shows up as such.
    let evidence = json!({
        "scenario": sc,
        "fortio": deltas(&before, &mid),
        "stream": deltas(&mid, &after),
        "kernel_cost": kernel_cost,
        // The machine is shared: other work running alongside shows up here.
        "loadavg_1m": [load_before, loadavg()],
    });
    let mut problems = Vec::new();
    if let Err(e) = tear_down(path, &node) {
        problems.push(format!("({}) repeat {repeat}: cleanup: {e:#}", sc.key()));
    }
    // `node` drops here: servers killed, namespaces, cgroups and pin dir removed.
    Ok(ScenarioRun {
        records,
        evidence,
        problems,
    })
}

pub(super) fn fortio_run(
    sc: Scenario,
    repeat: u32,
    test: Test,
    client: &Pod,
    cfg: &Config,
    l: &Load,
) -> Result<RunRecord> {
    proc::check_interrupted()?;
    let mut rec = RunRecord::new(repeat, sc, test, l.connections);
    match fortio::load(client, cfg.fortio, l) {
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
            // Ctrl-C kills the client; that is not a measurement failure to record.
            proc::check_interrupted()?;
            rec.error = Some(format!("{e:#}"));
        }
    }
    Ok(rec)
}

fn set_up_path(
    sc: Scenario,
    node: &Node,
    backend: Ipv4Addr,
    cfg: &Config,
) -> Result<DataPath, Failure> {
    match sc {
        Scenario::L7Direct
        | Scenario::L7Meshpath
        | Scenario::L7Nginx
        | Scenario::L7Haproxy
        | Scenario::L7Trace1
        | Scenario::L7Trace100 => Err(Failure::Failed(anyhow::anyhow!(
            "({}) is an L7 scenario: run by l7.rs",
            sc.key()
        ))),
        Scenario::XDirect
        | Scenario::XNodePortIptables
        | Scenario::XNodePortMeshpath
        | Scenario::XPodDirect
        | Scenario::XClusterIpIptables
        | Scenario::XClusterIpMeshpath
        | Scenario::XClusterIpMeshpathNoTc => Err(Failure::Failed(anyhow::anyhow!(
            "({}) is a cross-node scenario: run by xnode.rs",
            sc.key()
        ))),
        Scenario::A => Ok(DataPath::Direct),
        Scenario::B => {
            let svc = |name: &str, ip, port, target| iptables::Service {
                name: format!("default/{name}:p"),
                cluster_ip: ip,
                port,
                node_port: None,
                endpoints: vec![SocketAddrV4::new(backend, target)],
            };
            let services = [
                svc(HTTP_SVC, HTTP_CLUSTER_IP, HTTP_SVC_PORT, fortio::HTTP_PORT),
                svc(STREAM_SVC, STREAM_CLUSTER_IP, stream::PORT, stream::PORT),
            ];
            // The run id is `<pid>-<tag>`; the tag is its unique part (see iptables.rs).
            let id = node.id().to_string();
            let tag = id.rsplit('-').next().unwrap_or(&id);
            let rules =
                KubeProxyRules::install(node.node_netns_name(), tag, CLUSTER_CIDR, &services)?;
            Ok(DataPath::Iptables(rules))
        }
        Scenario::C | Scenario::D | Scenario::E | Scenario::CTcpMetricsOff => {
            let dir = node.work_dir().join("manifests");
            std::fs::create_dir_all(&dir).context("creating the manifests dir")?;
            let ep = [Ep::ready(backend)];
            let http_target = fortio::HTTP_PORT.to_string();
            let stream_target = stream::PORT.to_string();
            let yaml = manifests::docs(&[
                manifests::service(
                    HTTP_SVC,
                    &HTTP_CLUSTER_IP.to_string(),
                    HTTP_SVC_PORT,
                    &http_target,
                    "TCP",
                    "",
                ),
                manifests::endpoint_slice(HTTP_SVC, fortio::HTTP_PORT, "TCP", &ep),
                manifests::service(
                    STREAM_SVC,
                    &STREAM_CLUSTER_IP.to_string(),
                    stream::PORT,
                    &stream_target,
                    "TCP",
                    "",
                ),
                manifests::endpoint_slice(STREAM_SVC, stream::PORT, "TCP", &ep),
            ]);
            manifests::write(&dir, "bench.yaml", &yaml)?;
            let mut extra: Vec<&str> = match (sc, cfg.agent_has_redirect_flag) {
                (Scenario::D, _) => vec!["--socket-redirect", "true"],
                (_, true) => vec!["--socket-redirect", "false"],
                // A build from before the flag: redirection does not exist, (c) is the default.
                (_, false) => vec![],
            };
            if sc == Scenario::CTcpMetricsOff {
                extra.extend(["--tcp-metrics", "false"]);
            }
            let veth_netns = format!("/var/run/netns/{}", node.node_netns_name());
            if sc == Scenario::E {
                extra.extend(["--tc-pod-veths", "true", "--tc-veth-netns", &veth_netns]);
            }
            let log = node.work_dir().join("agent.log");
            match Agent::start(&dir, node.cgroup_path(), node.pin_dir(), &log, &extra) {
                Ok(a) if sc == Scenario::E => veth_ready(a),
                Ok(a) => Ok(DataPath::Meshpath(a)),
                Err(e) if sc == Scenario::D => Err(Failure::Unavailable(agent_error(&e))),
                Err(e) => Err(Failure::Failed(e.context("starting the meshpath agent"))),
            }
        }
    }
}

/// (e) measures only once both pods' veths carry the programs (the agent finds pods from
/// their processes: the client pod holds one for the whole scenario, see `run`).
fn veth_ready(a: Agent) -> Result<DataPath, Failure> {
    let attached = || a.log().matches("pod veth attached").count() >= 2;
    if meshpath_tests::wait_until(std::time::Duration::from_secs(10), attached) {
        return Ok(DataPath::Meshpath(a));
    }
    let why = a
        .log()
        .lines()
        .find(|l| l.contains("pod veth") && l.contains("WARN"))
        .unwrap_or("the pods' veths were not attached within 10 s")
        .to_owned();
    Err(Failure::Unavailable(why))
}

/// The agent's own complaint out of `Agent::start`'s error (which embeds the whole log).
fn agent_error(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("error") || l.contains("ERROR"))
        .unwrap_or_else(|| text.lines().next().unwrap_or("agent failed to start"))
        .to_owned()
}

/// Counters that show which path the traffic took, read before and after the measurements.
fn path_counters(path: &DataPath) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    match path {
        DataPath::Direct => {}
        DataPath::Iptables(rules) => {
            m.insert("dnat_packets".into(), rules.dnat_packets()?.into());
        }
        DataPath::Meshpath(a) => {
            let st = a.status()?;
            for (svc, key) in [(HTTP_SVC, "http_connects"), (STREAM_SVC, "stream_connects")] {
                let name = format!("default/{svc}");
                let n = agent::service(&st, &name).and_then(|s| s["connects"].as_u64());
                m.insert(key.into(), n.unwrap_or(0).into());
            }
            if let Some(c) = st["counters"].as_object() {
                for (k, v) in c {
                    m.insert(format!("counter:{k}"), v.clone());
                }
            }
        }
    }
    Ok(m)
}

/// The 1-minute load average (0 if unreadable).
pub(super) fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Counter changes between two snapshots; only counters that moved (the full list is long and
/// mostly zero), plus the path's own keys (DNAT hits, service connects) even when zero.
pub(super) fn deltas(before: &Map<String, Value>, after: &Map<String, Value>) -> Value {
    let mut delta = Map::new();
    for (k, v) in after {
        let d = v
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(before.get(k).and_then(Value::as_u64).unwrap_or(0));
        if d > 0 || !k.starts_with("counter:") {
            delta.insert(k.trim_start_matches("counter:").to_owned(), d.into());
        }
    }
    Value::Object(delta)
}

fn tear_down(path: DataPath, node: &Node) -> Result<()> {
    match path {
        DataPath::Direct => Ok(()),
        DataPath::Iptables(rules) => rules.remove(),
        DataPath::Meshpath(mut a) => {
            a.stop()?;
            // Detach and unpin explicitly rather than relying on the node's rmdir of the pin dir.
            let bin = agent::meshpath_bin()?;
            let pin = node.pin_dir().to_string_lossy().into_owned();
            proc::output(&bin.to_string_lossy(), &["cleanup", "--pin-dir", &pin]).map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::agent_error;

    #[test]
    fn agent_error_picks_the_agents_complaint() {
        // What Agent::start reports when the binary predates --socket-redirect.
        let e = anyhow::anyhow!(
            "meshpath agent exited (exit status: 2) before logging \"programmed\"; log:\n\
             error: unexpected argument '--socket-redirect' found\n\n  tip: to pass \
             '--socket-redirect' as a value, use '-- --socket-redirect'\n"
        );
        assert_eq!(
            agent_error(&e),
            "error: unexpected argument '--socket-redirect' found"
        );
    }
}
