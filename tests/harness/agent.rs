//! The real `meshpath` binary, started as an agent on a test node, and its `status --json`.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// Where the `meshpath` binary is: `MESHPATH_BIN` (set by `cargo xtask test`), else next to the
/// test executable's target dir.
pub fn meshpath_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("MESHPATH_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/meshpath
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("meshpath"));
    match candidate {
        Some(p) if p.is_file() => Ok(p),
        _ => bail!("meshpath binary not found: run the tests through `cargo xtask test` (or set MESHPATH_BIN)"),
    }
}

/// A running `meshpath agent`; SIGTERM and wait on drop.
pub struct Agent {
    child: Option<Child>,
    pin_dir: PathBuf,
    log: PathBuf,
    /// `--admin-addr`, when the arguments name one.
    admin_addr: Option<String>,
}

impl Agent {
    /// Starts the agent on `manifests`, attached to `cgroup`, maps pinned in `pin_dir`, and waits
    /// until it has programmed its first snapshot (status readable and `programmed` logged).
    pub fn start(
        manifests: &Path,
        cgroup: &Path,
        pin_dir: &Path,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Agent> {
        let source = [OsStr::new("--manifests"), manifests.as_os_str()];
        Agent::start_source(&source, cgroup, pin_dir, log, extra)
    }

    /// As [`Agent::start`], on the Kubernetes API that `kubeconfig` names (`--source kube`).
    pub fn start_kube(
        kubeconfig: &Path,
        cgroup: &Path,
        pin_dir: &Path,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Agent> {
        let source = [
            OsStr::new("--source"),
            OsStr::new("kube"),
            OsStr::new("--kubeconfig"),
            kubeconfig.as_os_str(),
        ];
        Agent::start_source(&source, cgroup, pin_dir, log, extra)
    }

    fn start_source(
        source: &[&OsStr],
        cgroup: &Path,
        pin_dir: &Path,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Agent> {
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(meshpath_bin()?)
            .arg("agent")
            .args(source)
            .arg("--cgroup")
            .arg(cgroup)
            .arg("--pin-dir")
            .arg(pin_dir)
            .args(extra)
            // MESHPATH_TEST_AGENT_LOG overrides the filter when debugging a test.
            .env(
                "MESHPATH_LOG",
                std::env::var("MESHPATH_TEST_AGENT_LOG")
                    .unwrap_or_else(|_| "info,meshpath=debug".into()),
            )
            .env("NO_COLOR", "1")
            // Its own process group: a Ctrl-C at the terminal is for the harness, which stops it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("starting meshpath agent")?;
        let admin_addr = extra
            .iter()
            .position(|a| *a == "--admin-addr")
            .and_then(|i| extra.get(i + 1))
            .map(|a| (*a).to_owned());
        let mut agent = Agent {
            child: Some(child),
            pin_dir: pin_dir.to_path_buf(),
            log: log.to_path_buf(),
            admin_addr,
        };
        // A readiness wait, not a bound: on a busy 2-core machine under software emulation (the
        // Linux 6.1 VM) a debug agent takes 8-15 s to load and verify every program.
        // The full pass's line: "service not (re)programmed" (an error) would match a bare
        // "programmed".
        agent.wait_log("programmed frontends=", Duration::from_secs(30))?;
        Ok(agent)
    }

    /// The agent's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The admin listener's address, when it was given with `--admin-addr`.
    pub fn admin_addr(&self) -> Option<&str> {
        self.admin_addr.as_deref()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent's log contains `needle` (failing early if the agent exited).
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "meshpath agent exited ({status}) before logging {needle:?}; log:\n{}",
                        self.log()
                    );
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "meshpath agent did not log {needle:?} within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn status(&self) -> anyhow::Result<Value> {
        status(&self.pin_dir)
    }

    /// Stops the agent (SIGTERM) and waits for it; the programs stay attached (pinned links).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    child.kill()?;
                    child.wait()?;
                    bail!("meshpath agent ignored SIGTERM for 5 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Runs the `meshpath` CLI with `args`: its stdout, or an error carrying its stderr.
pub fn meshpath<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> anyhow::Result<String> {
    let mut cmd = Command::new(meshpath_bin()?);
    cmd.args(args).env("NO_COLOR", "1");
    let out = cmd.output().context("running meshpath")?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `meshpath status --json` for a pin directory, agent running or not.
pub fn status(pin_dir: &Path) -> anyhow::Result<Value> {
    let args = [
        OsStr::new("status"),
        OsStr::new("--json"),
        OsStr::new("--pin-dir"),
    ];
    let out = meshpath(args.into_iter().chain([pin_dir.as_os_str()]))?;
    serde_json::from_str(&out).context("parsing meshpath status --json")
}

/// The status entry of the service whose name starts with `name` (e.g. "default/web:").
pub fn service<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"].as_str().is_some_and(|n| n.starts_with(name)))
}

/// As [`service`], panicking with the whole status when the service is missing.
pub fn svc<'a>(status: &'a Value, name: &str) -> &'a Value {
    service(status, name).unwrap_or_else(|| panic!("service {name} not in status: {status:#}"))
}

/// The backends (`ip:port`) of the service whose name starts with `name`.
pub fn backends(status: &Value, name: &str) -> Vec<String> {
    svc(status, name)["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b.as_str().expect("str").to_string())
        .collect()
}

/// Whether the service whose name starts with `name` is steered to the node proxy and a proxy
/// socket listens for it (so connect4 sends its connections there, not to the L4 fallback).
pub fn steered_to_proxy(status: &Value, name: &str) -> bool {
    let proxy = format!("{}:", crate::node_agent::PROXY_IP);
    service(status, name).is_some_and(|s| {
        s["proxy"]["listener"]
            .as_str()
            .is_some_and(|l| l.starts_with(&proxy))
            && s["proxy"]["listening"].as_bool() == Some(true)
    })
}

/// Whether the service whose name starts with `name` is steered to the node proxy but no proxy
/// socket listens for it (connect4 falls back to L4, or refuses when it fails closed).
pub fn steered_without_proxy(status: &Value, name: &str) -> bool {
    service(status, name).is_some_and(|s| s["proxy"]["listening"].as_bool() == Some(false))
}

/// A global counter of the status.
pub fn counter(status: &Value, name: &str) -> u64 {
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} missing: {status:#}"))
}
