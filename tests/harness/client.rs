//! Running `mp-testpod` in pods: servers (long-lived, registered with the node) and one-shot
//! clients whose JSON report is parsed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::node::Node;
use crate::pod::Target;

/// How long a server may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for one client run. Clients have their own per-operation timeouts; this only
/// keeps a hung client from hanging the whole test.
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

/// Path of the `mp-testpod` binary: `$MP_TESTPOD_BIN`, else next to the running test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/mp-testpod`).
pub fn testpod_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MP_TESTPOD_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("MP_TESTPOD_BIN={} does not exist", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the current executable")?;
    // Integration tests live in target/<profile>/deps; binaries of the package in
    // target/<profile>. The parent itself is checked too for callers that are binaries.
    let candidates: Vec<PathBuf> = [exe.parent().and_then(|d| d.parent()), exe.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("mp-testpod"))
        .collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "mp-testpod binary not found (looked at {candidates:?}); run `cargo build -p meshpath-tests --bins` \
         or `cargo xtask test`, or set MP_TESTPOD_BIN"
    )
}

/// The JSON report of the `tcp`, `udp-connected`, `udp-unconnected` and `http` clients. Fields a
/// client does not produce stay at their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientReport {
    /// Successful round trips by the server name that answered.
    pub counts: BTreeMap<String, u64>,
    /// Failures by errno name (`ECONNREFUSED`, ..., `errno_N`) or `timeout`/`eof`.
    pub errors: BTreeMap<String, u64>,
    /// getpeername() of the first successful socket (tcp, udp-connected).
    pub first_peer: Option<String>,
    /// Duration of the first connect() call in µs (tcp).
    pub first_connect_us: Option<u64>,
    /// Longest connect() call in µs (tcp).
    pub max_connect_us: Option<u64>,
    /// Source addresses reported by recv_from (udp-unconnected).
    pub sources: BTreeMap<String, u64>,
    /// Non-200 answers by `CODE BODY` (http).
    pub answers: BTreeMap<String, u64>,
    /// Response headers asked for with `--show-header`, by `name: value` (http).
    pub resp_headers: BTreeMap<String, u64>,
    /// Fastest and slowest answered request in µs, connect included (http).
    pub min_us: Option<u64>,
    pub max_us: Option<u64>,
    /// Every attempt in order, with `--per-request 1` (http).
    pub requests: Vec<RequestRecord>,
    /// Answering servers in order, as (name, replies in a row) (udp-unconnected).
    pub runs: Vec<(String, u64)>,
    /// Session replies that did not continue the server's count for this socket
    /// (udp-unconnected `--session 1`).
    pub session_breaks: u64,
}

/// One attempt of the http client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestRecord {
    /// When the answer (or failure) was complete, µs since the Unix epoch.
    pub at_us: u64,
    /// Request duration in µs.
    pub us: u64,
    /// HTTP status, 0 when no answer came.
    pub status: u16,
    /// The response body, or the error name when `status` is 0.
    pub body: String,
}

impl ClientReport {
    /// Round trips answered by `name`.
    pub fn count(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or(0)
    }

    /// All successful round trips.
    pub fn ok(&self) -> u64 {
        self.counts.values().sum()
    }

    /// All failures.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Output of a finished process.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Spawn `cmd` with piped stdout/stderr and wait for it, killing it after `deadline`.
fn run_with_deadline(cmd: Command, deadline: Duration) -> Result<Finished> {
    run_until(cmd, deadline, &|| false)
}

/// Spawn `cmd` (e.g. from [`Pod::command`]) with piped stdout/stderr and wait for it; kill it
/// after `deadline`, or as soon as `stop()` says so (e.g. Ctrl-C in a long benchmark). Both pipes
/// are drained on threads so a chatty child never blocks on a full pipe.
pub fn run_until(
    mut cmd: Command,
    deadline: Duration,
    stop: &dyn Fn() -> bool,
) -> Result<Finished> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
    // Read both pipes on threads so a chatty child cannot block on a full pipe while we poll.
    let collect = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out_t = collect(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err_t = collect(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= end || stop() {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_t.join().unwrap_or_default();
            bail!(
                "{:?} {:?} did not finish within {deadline:?}; stderr: {stderr}",
                cmd.get_program(),
                cmd.get_args().collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Finished {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

impl Node {
    /// Start `mp-testpod serve --name NAME` in `at` listening on the given ports (0.0.0.0), and
    /// wait (up to 5 s) until it printed `ready`. The server is registered with the node (killed
    /// on Drop); its stderr goes to `<work_dir>/<pod>-<name>.log`. Returns its pid.
    pub fn spawn_server(
        &self,
        at: impl Into<Target>,
        name: &str,
        tcp_ports: &[u16],
        udp_ports: &[u16],
        http_ports: &[u16],
    ) -> Result<u32> {
        let mut args = vec!["serve".to_string(), "--name".to_string(), name.to_string()];
        for (flag, ports) in [
            ("--tcp", tcp_ports),
            ("--udp", udp_ports),
            ("--http", http_ports),
        ] {
            for p in ports {
                args.push(flag.to_string());
                args.push(p.to_string());
            }
        }
        self.spawn_ready(at, name, &args)
    }

    /// Start `mp-testpod xfer --listen PORT` (the byte-exactness peer) in `at`; see
    /// [`Node::spawn_server`] for readiness, logs and cleanup.
    pub fn spawn_xfer_server(&self, at: impl Into<Target>, port: u16) -> Result<u32> {
        let args = ["xfer".to_string(), "--listen".to_string(), port.to_string()];
        self.spawn_ready(at, &format!("xfer-{port}"), &args)
    }

    /// Start `mp-testpod ARGS` in `at` and wait (up to 5 s) until it printed `ready`.
    pub fn spawn_ready(&self, at: impl Into<Target>, name: &str, args: &[String]) -> Result<u32> {
        let pod = self.target(at.into());
        let log = self.work_dir().join(format!("{}-{name}.log", pod.label()));
        let mut cmd = pod.command(testpod_bin()?)?;
        cmd.args(args);
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning server {name} in {}", pod.label()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        // Registered before waiting, so a server that never gets ready is still killed on Drop.
        let pid = self.children.add(
            format!("server {name} in {}", pod.label()),
            child,
            Some(log.clone()),
        );

        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let res = r.read_line(&mut line).map(|_| line);
            let _ = tx.send(res);
            // Keep draining so the server never blocks on a full stdout pipe.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let got = rx.recv_timeout(READY_TIMEOUT);
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        match got {
            Ok(Ok(line)) if line.trim() == "ready" => Ok(pid),
            Ok(Ok(line)) => bail!(
                "server {name} in {} printed {line:?} instead of `ready`; stderr:\n{}",
                pod.label(),
                log_text()
            ),
            Ok(Err(e)) => bail!("reading stdout of server {name}: {e}"),
            Err(_) => bail!(
                "server {name} in {} did not print `ready` within {READY_TIMEOUT:?}; stderr:\n{}",
                pod.label(),
                log_text()
            ),
        }
    }

    /// Run `mp-testpod <args>` in `at` and parse the JSON object it prints. Fails if it exits
    /// non-zero or prints something that is not JSON.
    pub fn run_client(&self, at: impl Into<Target>, args: &[&str]) -> Result<serde_json::Value> {
        self.run_client_in(self.target(at.into()), args)
    }

    /// [`Node::run_client`] in any pod, e.g. one made with [`Pod::in_cgroup`].
    pub fn run_client_in(&self, pod: &crate::Pod, args: &[&str]) -> Result<serde_json::Value> {
        let mut cmd = pod.command(testpod_bin()?)?;
        cmd.args(args);
        let out = run_with_deadline(cmd, CLIENT_DEADLINE)?;
        let ctx = || {
            format!(
                "mp-testpod {} in {}: {}; stdout: {:?}; stderr: {:?}",
                args.join(" "),
                pod.label(),
                out.status,
                out.stdout.trim(),
                out.stderr.trim()
            )
        };
        if !out.status.success() {
            bail!("{}", ctx());
        }
        serde_json::from_str(out.stdout.trim()).with_context(ctx)
    }

    fn report(&self, at: Target, args: &[&str]) -> Result<ClientReport> {
        let v = self.run_client(at, args)?;
        serde_json::from_value(v.clone()).with_context(|| format!("unexpected client report {v}"))
    }

    /// `count` sequential TCP connects to `addr`, each reading the server's name line.
    pub fn tcp(&self, at: impl Into<Target>, addr: SocketAddr, count: u32) -> Result<ClientReport> {
        self.counted("tcp", at.into(), addr, count)
    }

    /// `count` connected UDP sockets, each sending one datagram to `addr`.
    pub fn udp_connected(
        &self,
        at: impl Into<Target>,
        addr: SocketAddr,
        count: u32,
    ) -> Result<ClientReport> {
        self.counted("udp-connected", at.into(), addr, count)
    }

    /// One unconnected UDP socket doing `count` sendto/recvfrom round trips with `addr`.
    pub fn udp_unconnected(
        &self,
        at: impl Into<Target>,
        addr: SocketAddr,
        count: u32,
    ) -> Result<ClientReport> {
        self.counted("udp-unconnected", at.into(), addr, count)
    }

    /// `count` HTTP/1.1 GETs to `addr` over keep-alive connections; counts are by response body.
    pub fn http(
        &self,
        at: impl Into<Target>,
        addr: SocketAddr,
        count: u32,
    ) -> Result<ClientReport> {
        self.counted("http", at.into(), addr, count)
    }

    /// `mp-testpod MODE --addr ADDR --count N`, parsed.
    fn counted(
        &self,
        mode: &str,
        at: Target,
        addr: SocketAddr,
        count: u32,
    ) -> Result<ClientReport> {
        let (a, c) = (addr.to_string(), count.to_string());
        self.report(at, &[mode, "--addr", &a, "--count", &c])
    }
}
