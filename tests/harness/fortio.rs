//! fortio in the test pods: its echo server as an HTTP backend and `fortio load` as a client
//! whose JSON result and log say how many requests failed and how many connects were refused.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::client::run_until;
use crate::wait::wait_until;
use crate::Node;

/// fortio's echo port in the backend pods.
pub const PORT: u16 = 8080;

/// `fortio` on PATH, in /usr/local/bin or ~/go/bin (where `scripts/setup.sh` installs it).
pub fn binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/local/bin".into());
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join("go/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("fortio"))
        .find(|p| p.is_file())
}

fn bin() -> Result<PathBuf> {
    binary().context("fortio not found (bash scripts/setup.sh installs it)")
}

impl Node {
    /// Starts `fortio server` (HTTP echo on [`PORT`] only) in pod `i` and waits until it listens.
    pub fn spawn_fortio_server(&self, i: usize) -> Result<()> {
        let pod = self.pod(i);
        let log = self.work_dir().join(format!("fortio-server-{i}.log"));
        let mut cmd = pod.command(bin()?)?;
        cmd.args(["server", "-http-port", &PORT.to_string()])
            .args(["-grpc-port", "disabled", "-redirect-port", "disabled"])
            .args(["-tcp-port", "disabled", "-udp-port", "disabled"])
            .args(["-ui-path", "", "-echo-debug-path", "", "-logger-json=false"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        pod.spawn(cmd)?;
        let ready = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("http-echo server listening"))
        });
        if !ready {
            bail!(
                "fortio server in pod {i} not listening: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// One `fortio load`.
#[derive(Clone, Debug)]
pub struct Load {
    pub url: String,
    /// Requests per second over all connections.
    pub qps: u32,
    pub connections: u32,
    /// Run for this long, or `requests` in all when set.
    pub duration: Duration,
    pub requests: Option<u32>,
    /// false: a new connection per request (`-keepalive=false`).
    pub keepalive: bool,
}

/// A `fortio load` running on a thread; [`Running::finish`] waits for its report.
pub struct Running {
    load: Load,
    thread: JoinHandle<Result<crate::Finished>>,
}

/// What a run sent and how it ended, from fortio's JSON (`RetCodes`, where -1 is a socket
/// error) and its log.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub url: String,
    pub keepalive: bool,
    /// Requests made (each counted once, with its final outcome: fortio retries a request once
    /// on a reused connection the server had closed, and that retry is not a failure).
    pub sent: u64,
    pub ok: u64,
    /// Non-200 answers and socket errors.
    pub failed: u64,
    /// connect() refused (fortio logs each).
    pub refused: u64,
    pub codes: BTreeMap<String, u64>,
    /// fortio's log, for failure messages.
    pub log_tail: String,
}

impl Node {
    /// Starts `load` from pod `i`.
    pub fn start_fortio_load(&self, i: usize, load: &Load) -> Result<Running> {
        let mut cmd = self.pod(i).command(bin()?)?;
        cmd.args(["load", "-json", "-", "-loglevel", "Warning", "-uniform"])
            .args(["-qps", &load.qps.to_string()])
            .args(["-c", &load.connections.to_string()])
            .arg(format!("-keepalive={}", load.keepalive));
        match load.requests {
            Some(n) => cmd.args(["-n", &n.to_string()]),
            None => cmd.args(["-t", &format!("{}ms", load.duration.as_millis())]),
        };
        // A refused connect must fail at once, not wait out the default 3 s timeout.
        cmd.args(["-timeout", "2s"]).arg(&load.url);
        let deadline = load.duration + Duration::from_secs(60);
        let thread = std::thread::spawn(move || run_until(cmd, deadline, &|| false));
        Ok(Running {
            load: load.clone(),
            thread,
        })
    }
}

impl Running {
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn finish(self) -> Result<LoadReport> {
        let out = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("fortio thread panicked"))??;
        let tail: String = {
            let lines: Vec<&str> = out.stderr.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        let ctx = || {
            format!(
                "fortio load {}: {}; log:\n{tail}",
                self.load.url, out.status
            )
        };
        let start = out.stdout.find('{').with_context(ctx)?;
        let json: serde_json::Value =
            serde_json::from_str(&out.stdout[start..]).with_context(ctx)?;
        let codes: BTreeMap<String, u64> = json["RetCodes"]
            .as_object()
            .with_context(ctx)?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect();
        let sent: u64 = codes.values().sum();
        let ok = codes.get("200").copied().unwrap_or(0);
        Ok(LoadReport {
            url: self.load.url.clone(),
            keepalive: self.load.keepalive,
            sent,
            ok,
            failed: sent - ok,
            refused: out.stderr.matches("connection refused").count() as u64,
            codes,
            log_tail: tail,
        })
    }
}
