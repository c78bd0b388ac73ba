//! kubectl for tests, against one [`KubeCluster`], and polling helpers.

use std::ffi::OsStr;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::KubeCluster;

impl KubeCluster {
    /// Run the cluster's kubectl with this cluster's kubeconfig (and a per-run discovery cache,
    /// so no state leaks between runs that happen to get the same port).
    pub fn kubectl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_cmd(args)
            .stdin(Stdio::null())
            .output()
            .context("running kubectl")
    }

    /// Like [`KubeCluster::kubectl`] with `stdin` fed to the command.
    pub fn kubectl_stdin<I, S>(&self, args: I, stdin: &str) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = self
            .kubectl_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        let mut input = child.stdin.take().expect("stdin is piped");
        input.write_all(stdin.as_bytes())?;
        drop(input);
        child.wait_with_output().context("waiting for kubectl")
    }

    /// Run kubectl and return its stdout, or fail with its stderr.
    pub fn kubectl_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let shown = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy())
            .collect::<Vec<_>>();
        checked(&shown.join(" "), self.kubectl(&args)?)
    }

    /// `kubectl get <args> -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        let out = self.kubectl_ok(&all)?;
        serde_json::from_str(&out).with_context(|| format!("parsing `kubectl {}`", all.join(" ")))
    }

    /// `kubectl apply -f -` with `yaml`; returns kubectl's stdout.
    pub fn apply_yaml(&self, yaml: &str) -> Result<String> {
        checked(
            "apply -f -",
            self.kubectl_stdin(["apply", "-f", "-"], yaml)?,
        )
    }

    fn kubectl_cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(self.bins.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kubectl-cache").display()
            ))
            .args(args);
        cmd
    }

    /// Call `f` every 200 ms until it returns `Some`, failing after `timeout` with the last
    /// error `f` returned (if any).
    pub fn poll_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let t0 = Instant::now();
        let mut last_err = None;
        loop {
            match f() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
            if t0.elapsed() > timeout {
                let why = last_err
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default();
                bail!(
                    "{}: timed out after {timeout:?} waiting until {what}{why}",
                    self.id.base()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub(crate) fn checked(what: &str, out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "`kubectl {what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
