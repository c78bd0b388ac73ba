//! The real `meshpath` binary, started as an agent on a test node, and its `status --json`.

use std::ffi::OsStr;
use std::fs::File;
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("starting meshpath agent")?;
        let mut agent = Agent {
            child: Some(child),
            pin_dir: pin_dir.to_path_buf(),
            log: log.to_path_buf(),
        };
        agent.wait_log("programmed", Duration::from_secs(10))?;
        Ok(agent)
    }

    /// The agent's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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

/// `meshpath status --json` for a pin directory, agent running or not.
pub fn status(pin_dir: &Path) -> anyhow::Result<Value> {
    let out = Command::new(meshpath_bin()?)
        .args(["status", "--json", "--pin-dir"])
        .arg(pin_dir)
        .env("NO_COLOR", "1")
        .output()
        .context("running meshpath status")?;
    if !out.status.success() {
        bail!(
            "meshpath status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing meshpath status --json")
}

/// The status entry of the service whose name starts with `name` (e.g. "default/web:").
pub fn service<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"].as_str().is_some_and(|n| n.starts_with(name)))
}
