//! fortio: the echo server in the backend pod and `fortio load` in the client pod.
//!
//! The request is a 1 KiB POST (`-payload-size 1024`, random bytes) to fortio's echo handler,
//! which sends the body back: 1 KiB each way plus HTTP headers (~1.1 KiB on the wire per
//! direction), over keep-alive HTTP/1.1 connections of fortio's fast client. The same request is
//! used for the fixed-rate latency runs and the max-qps runs.
//!
//! fortio's histogram buckets are 1, 2, …, 10, 11, 12, 14, 16, 18, 20, 25, …, 50, 60, …, 100, 200,
//! …, 1000, 2000, … times the resolution, and percentiles are interpolated inside a bucket. At
//! 10 µs resolution that is 10–20 % wide buckets between 100 µs and 1 ms but 1 ms wide ones
//! between 1 and 10 ms: differences smaller than a bucket are not resolved.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use meshpath_tests::{Node, Pod};
use serde_json::Value;

use super::proc::{self, ReadyOn};

/// The version `scripts/setup.sh` installs (newer ones do not build here; see there).
pub const EXPECTED_VERSION: &str = "1.66.5";
/// fortio's echo port in the backend pod.
pub const HTTP_PORT: u16 = 8080;
/// Request (and echoed response) body size.
pub const PAYLOAD_BYTES: u32 = 1024;
/// Histogram resolution: fortio's default (1 ms) is coarser than the sub-millisecond latencies
/// between two pods, and its percentiles would just interpolate inside the first bucket.
const RESOLUTION_S: &str = "0.00001";

/// The fortio binary and its version.
pub struct Fortio {
    pub path: PathBuf,
    pub version: String,
}

/// Find `fortio` on PATH (or in /usr/local/bin and ~/go/bin, where `go install` puts it).
pub fn find() -> Result<Fortio> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/local/bin".into());
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join("go/bin"));
    }
    let Some(path) = dirs.iter().map(|d| d.join("fortio")).find(|p| p.is_file()) else {
        bail!(
            "fortio not found; install it with `bash scripts/setup.sh` \
             (go install fortio.org/fortio@v{EXPECTED_VERSION})"
        );
    };
    let version = proc::output(&path.to_string_lossy(), &["version"])
        .with_context(|| format!("{} version", path.display()))?
        .trim()
        .to_owned();
    Ok(Fortio { path, version })
}

/// How the echo server's listening socket is made. This decides whether socket redirection
/// (scenario (d)) can see the server's side of a connection at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Listen {
    /// fortio's (Go's) default: one dual-stack IPv6 socket `[::]:8080`; IPv4 clients arrive on
    /// AF_INET6 sockets with v4-mapped addresses. What most Go and Java servers do.
    Wildcard,
    /// An AF_INET socket bound to the backend pod's IPv4 address.
    PodIp,
}

impl Listen {
    pub fn describe(self) -> &'static str {
        match self {
            Listen::Wildcard => "[::]:8080, dual-stack AF_INET6 socket (fortio/Go default)",
            Listen::PodIp => "<pod IP>:8080, AF_INET socket (--fortio-listen pod-ip)",
        }
    }
}

/// Start `fortio server` in `pod` with only the HTTP echo port open (no gRPC, redirect, TCP/UDP
/// echo or UI listeners: nothing else competes for the pod's CPU).
pub fn spawn_server(node: &Node, pod: &Pod, fortio: &Fortio, listen: Listen) -> Result<()> {
    let mut cmd = pod.command(&fortio.path)?;
    // Go listens dual-stack on any wildcard, 0.0.0.0 included; only a concrete IPv4 address
    // gives an AF_INET socket.
    let addr = match listen {
        Listen::Wildcard => HTTP_PORT.to_string(),
        Listen::PodIp => format!("{}:{HTTP_PORT}", pod.ip()),
    };
    cmd.args(["server", "-http-port", &addr]).args([
        "-grpc-port",
        "disabled",
        "-redirect-port",
        "disabled",
        "-tcp-port",
        "disabled",
        "-udp-port",
        "disabled",
        "-ui-path",
        "",
        "-echo-debug-path",
        "",
        "-logger-json=false",
    ]);
    let log = node.work_dir().join("fortio-server.log");
    // fortio logs "http-echo server listening on tcp [::]:8080" to stderr once it accepts.
    let marker = (ReadyOn::Stderr, "http-echo server listening");
    proc::spawn_server(node, pod, "fortio server", cmd, marker, &log)
}

/// One `fortio load` run.
pub struct Load<'a> {
    pub url: &'a str,
    /// Requests per second over all connections; 0 = as fast as possible.
    pub qps: u32,
    pub connections: u32,
    pub duration: Duration,
}

/// What the benchmark keeps from a fortio run.
#[derive(Debug)]
pub struct LoadResult {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub actual_qps: f64,
    /// Requests answered with 200.
    pub ok: u64,
    /// Everything else (fortio counts socket errors as code -1).
    pub failed: u64,
    /// fortio's JSON without the request payload (1 KiB of base64 noise per run).
    pub raw: Value,
}

/// Run `fortio load` in `pod` and parse its JSON. Fails if fortio fails or no request succeeded;
/// partial failures are returned in `failed` for the report.
pub fn load(pod: &Pod, fortio: &Fortio, l: &Load) -> Result<LoadResult> {
    let mut cmd = pod.command(&fortio.path)?;
    let secs = format!("{}ms", l.duration.as_millis());
    cmd.args([
        "load",
        "-quiet",
        "-json",
        "-",
        "-p",
        "50,90,99",
        "-r",
        RESOLUTION_S,
    ])
    .args(["-qps", &l.qps.to_string()])
    .args(["-c", &l.connections.to_string()])
    .args(["-t", &secs])
    .args(["-payload-size", &PAYLOAD_BYTES.to_string()])
    // Spread the connections' requests evenly over time. Without it fortio fires all -c
    // connections in lock-step, so at c=64 every tick is a burst of 64 simultaneous requests
    // on a 2-core machine and the percentiles measure that burst's queue, not the path.
    .arg("-uniform")
    .arg(l.url);
    // Generous: fortio stops on its own after -t; the slack covers start-up and a slow drain.
    let out = proc::run_with_deadline(cmd, l.duration + Duration::from_secs(30))?;
    let ctx = || {
        format!(
            "fortio load -qps {} -c {} {} in {}: {}; stderr: {}",
            l.qps,
            l.connections,
            l.url,
            pod.label(),
            out.status,
            proc::tail(&out.stderr, 10)
        )
    };
    if !out.status.success() {
        bail!("{}", ctx());
    }
    let json_start = out.stdout.find('{').with_context(ctx)?;
    let mut raw: Value = serde_json::from_str(&out.stdout[json_start..]).with_context(ctx)?;
    if let Some(obj) = raw.as_object_mut() {
        obj.remove("Payload");
    }
    parse(raw).with_context(ctx)
}

fn parse(raw: Value) -> Result<LoadResult> {
    let pct = |p: f64| -> Result<f64> {
        raw["DurationHistogram"]["Percentiles"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["Percentile"].as_f64() == Some(p)))
            .and_then(|e| e["Value"].as_f64())
            .map(|s| s * 1e6)
            .with_context(|| format!("no p{p} in fortio's DurationHistogram"))
    };
    let mut ok = 0;
    let mut failed = 0;
    if let Some(codes) = raw["RetCodes"].as_object() {
        for (code, n) in codes {
            let n = n.as_u64().unwrap_or(0);
            if code == "200" {
                ok += n;
            } else {
                failed += n;
            }
        }
    }
    if ok == 0 {
        bail!("no request succeeded (RetCodes {})", raw["RetCodes"]);
    }
    Ok(LoadResult {
        p50_us: pct(50.0)?,
        p90_us: pct(90.0)?,
        p99_us: pct(99.0)?,
        actual_qps: raw["ActualQPS"].as_f64().context("no ActualQPS")?,
        ok,
        failed,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fortio_json() {
        let raw = serde_json::json!({
            "ActualQPS": 999.5,
            "RetCodes": {"200": 990, "-1": 10},
            "DurationHistogram": {"Percentiles": [
                {"Percentile": 50, "Value": 0.000143},
                {"Percentile": 90, "Value": 0.000213},
                {"Percentile": 99, "Value": 0.00033}
            ]}
        });
        let r = parse(raw).unwrap();
        assert!((r.p50_us - 143.0).abs() < 1e-6);
        assert!((r.p99_us - 330.0).abs() < 1e-6);
        assert_eq!((r.ok, r.failed), (990, 10));
        assert!(parse(serde_json::json!({"RetCodes": {"-1": 5}})).is_err());
    }
}
