//! Requests from the walk-through's client pod: `mp-testpod http` for counted runs, curl for the
//! seed's own commands (their output is shown as it is), fortio for the circuit breaker.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{bodies, Walkthrough};
use crate::{run_until, testpod_bin, ClientReport, Finished};

/// Upper bound of one client process (the 7 s delay included, with room for busy cores).
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

impl Walkthrough {
    fn in_client(&self, program: &str, args: &[&str]) -> Result<Finished> {
        let mut cmd = self.node().client().command(program)?;
        cmd.args(args);
        run_until(cmd, CLIENT_DEADLINE, &|| false)
    }

    /// `mp-testpod http --addr <svc's ClusterIP>:8080 ARGS` from the client pod.
    pub(crate) fn http(&self, svc: &str, args: &[&str]) -> Result<ClientReport> {
        let addr = format!("{}:8080", self.vip(svc)?);
        let bin = testpod_bin()?;
        let mut all = vec!["http", "--addr", &addr];
        all.extend_from_slice(args);
        let out = self.in_client(&bin.display().to_string(), &all)?;
        if !out.status.success() {
            bail!("mp-testpod http {addr}: {}: {}", out.status, out.stderr);
        }
        serde_json::from_str(out.stdout.trim())
            .with_context(|| format!("mp-testpod report {:?}", out.stdout))
    }

    /// `curl -s ARGS` from the client pod, echoed as the seed shows its curls; returns stdout.
    pub(crate) fn curl(&self, shown: &str, args: &[&str]) -> Result<String> {
        self.say(&format!("$ curl {shown}"));
        let mut all = vec!["-sS", "--max-time", "60"];
        all.extend_from_slice(args);
        let out = self.in_client("curl", &all)?;
        if !out.status.success() {
            bail!("curl {shown}: {}: {}", out.status, out.stderr.trim());
        }
        for line in out.stdout.replace('\r', "").lines() {
            self.say(&format!("  {line}"));
        }
        Ok(out.stdout.replace('\r', ""))
    }

    /// `fortio load ARGS -json - URL` from the client pod: fortio's own report (stderr) is shown
    /// trimmed to its result lines; returns the status-code counts.
    pub(crate) fn fortio(&self, args: &[&str], url: &str) -> Result<BTreeMap<String, u64>> {
        self.say(&format!("$ fortio load {} {url}", args.join(" ")));
        let mut all = vec!["load"];
        all.extend_from_slice(args);
        all.extend(["-json", "-", url]);
        let out = self.in_client("fortio", &all)?;
        if !out.status.success() {
            bail!("fortio: {}: {}", out.status, out.stderr);
        }
        for line in out.stderr.lines().filter(|l| {
            ["Ended after", "Sockets used", "Code ", "All done"]
                .iter()
                .any(|k| l.contains(k))
        }) {
            self.say(&format!("  {line}"));
        }
        let report: serde_json::Value =
            serde_json::from_str(&out.stdout).context("fortio's JSON report")?;
        Ok(report["RetCodes"]
            .as_object()
            .context("RetCodes")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect())
    }

    /// The ConfigMap file golang-app-data serves now (as the API has it).
    pub(crate) fn config(&self) -> Result<String> {
        let cm = self
            .node()
            .kube()
            .get_json(&["configmap", "golang-app-data-cm"])?;
        Ok(cm["data"]["config-data.json"]
            .as_str()
            .unwrap_or(bodies::CONFIG)
            .to_string())
    }

    /// Names of the running pods matching `selector` in the default namespace.
    pub(crate) fn pods(&self, selector: &str) -> Result<Vec<String>> {
        let list = self
            .node()
            .kube()
            .get_json(&["pods", "-n", "default", "-l", selector])?;
        let mut names: Vec<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The request lines (`{"app":…,"path":…}`) pod `pod` has logged so far.
    pub(crate) fn requests_logged(&self, pod: &str) -> Vec<serde_json::Value> {
        self.node()
            .pod_log("default", pod)
            .lines()
            .filter(|l| l.starts_with("{\"app\":"))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// `name count` pairs of a report's answers, the seed's bodies replaced by short names.
pub(crate) fn summary(r: &ClientReport, names: &[(&str, String)]) -> String {
    let mut parts = Vec::new();
    for (body, n) in &r.counts {
        let name = names
            .iter()
            .find(|(_, b)| b == body)
            .map_or_else(|| format!("{body:?}"), |(n, _)| n.to_string());
        parts.push(format!("{name} {n}"));
    }
    for (err, n) in &r.answers {
        parts.push(format!("{err:?} {n}"));
    }
    for (err, n) in r.errors.iter().filter(|(e, _)| !e.starts_with("http_")) {
        parts.push(format!("{err} {n}"));
    }
    parts.join(", ")
}
