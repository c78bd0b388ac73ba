//! Instructions per proxied request, counted by callgrind: the proxy crate's `tests::profile`
//! (one request path with a header match, two weighted destinations and retries configured) run
//! twice under valgrind, its requests sent straight to the backend and then through the proxy;
//! (proxied − direct) ÷ requests is what the hop costs. Instruction counts do not move with the
//! machine's load, so one measurement per bench run is enough (the L7 rows need repeats; this
//! does not).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::paths::workspace_root;

/// Requests per profiled run (the test's own default).
const REQUESTS: u32 = 2000;
/// The count before any of the proxy's performance work (the issue's "today"); the target is half.
pub const BASELINE: f64 = 74_888.0;
/// A callgrind run of 2000 requests takes about 2 s here; the deadline only catches a hang.
const DEADLINE: Duration = Duration::from_secs(600);

/// Builds the proxy's release test binary (cargo does nothing when it is fresh), runs both
/// modes under callgrind in `scratch`; the evidence entry, or the error as text.
pub fn measure(scratch: &Path) -> Value {
    match try_measure(scratch) {
        Ok(v) => v,
        Err(e) => json!({ "error": format!("{e:#}") }),
    }
}

fn try_measure(scratch: &Path) -> Result<Value> {
    let bin = test_binary()?;
    std::fs::create_dir_all(scratch)?;
    let direct = run(&bin, "direct", scratch)?;
    let proxied = run(&bin, "proxied", scratch)?;
    let per_request = (proxied as f64 - direct as f64) / f64::from(REQUESTS);
    Ok(json!({
        "requests": REQUESTS,
        "direct_instructions": direct,
        "proxied_instructions": proxied,
        "per_request": per_request,
        "baseline": BASELINE,
        "test": "meshpath-proxy tests::profile (header match, weighted route, retries)",
    }))
}

/// `cargo test --release -p meshpath-proxy --no-run`'s library test executable.
fn test_binary() -> Result<PathBuf> {
    let out = Command::new(crate::test::cargo_bin())
        .current_dir(workspace_root())
        .args([
            "test",
            "--release",
            "-p",
            "meshpath-proxy",
            "--lib",
            "--no-run",
        ])
        .args(["--message-format", "json"])
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "cargo test --release -p meshpath-proxy --no-run failed: {}",
            super::proc::tail(&String::from_utf8_lossy(&out.stderr), 20)
        );
    }
    executable(&String::from_utf8_lossy(&out.stdout))
        .context("cargo named no test executable for meshpath-proxy")
}

/// The library test executable among cargo's JSON messages.
fn executable(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter(|m| m["target"]["name"] == "meshpath_proxy")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// One callgrind run of the profile test in `mode`; the program's total instruction count.
fn run(bin: &Path, mode: &str, scratch: &Path) -> Result<u64> {
    let out_file = scratch.join(format!("callgrind.{mode}.out"));
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(bin)
        .args(["tests::profile", "--ignored", "--test-threads", "1"])
        .env("MP_PROFILE_MODE", mode)
        .env("MP_PROFILE_REQUESTS", REQUESTS.to_string());
    let done = super::proc::run_with_deadline(cmd, DEADLINE)
        .with_context(|| format!("valgrind --tool=callgrind ({mode})"))?;
    if !done.status.success() {
        bail!(
            "valgrind --tool=callgrind ({mode}) failed ({}): {}",
            done.status,
            super::proc::tail(&done.stderr, 15)
        );
    }
    let text = std::fs::read_to_string(&out_file)
        .with_context(|| format!("reading {}", out_file.display()))?;
    total(&text).with_context(|| format!("no summary line in {}", out_file.display()))
}

/// The `summary:` (or `totals:`) line of a callgrind output file: instructions executed.
fn total(callgrind_out: &str) -> Option<u64> {
    callgrind_out.lines().find_map(|l| {
        let rest = l
            .strip_prefix("summary:")
            .or_else(|| l.strip_prefix("totals:"))?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The PASS/MISS line: at most half the baseline.
pub fn check(v: &Value) -> String {
    let target = BASELINE / 2.0;
    match v["per_request"].as_f64() {
        Some(n) if n <= target => format!(
            "PASS  instructions per proxied request ≤ half of {BASELINE:.0} ({target:.0}): {n:.0} (callgrind)"
        ),
        Some(n) => format!(
            "MISS  instructions per proxied request ≤ half of {BASELINE:.0} ({target:.0}): {n:.0} (callgrind), {:.0} over",
            n - target
        ),
        None => format!(
            "n/a   instructions per proxied request ≤ half of {BASELINE:.0}: not measured ({})",
            v["error"].as_str().unwrap_or("not run")
        ),
    }
}

/// The results.md subsection.
pub fn markdown(v: &Value) -> String {
    let mut s = String::from("\n### Instructions per proxied request (callgrind)\n\n");
    if let Some(n) = v["per_request"].as_f64() {
        let _ = writeln!(
            s,
            "{}: {} requests straight to the backend took {} instructions, through the proxy {} \
             — {n:.0} per proxied request, against {BASELINE:.0} before the proxy's performance \
             work ({:.2}×). `valgrind --tool=callgrind` of the release test binary, one run per \
             mode (counts do not depend on the machine's load).",
            v["test"].as_str().unwrap_or("?"),
            v["requests"],
            v["direct_instructions"],
            v["proxied_instructions"],
            n / BASELINE
        );
    }
    let _ = write!(s, "\n```\n{}\n```\n", check(v));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary_and_checks_against_half_the_baseline() {
        let out = "version: 1\ncreator: callgrind-3.24\nevents: Ir\nsummary: 123456789\n";
        assert_eq!(total(out), Some(123_456_789));
        assert_eq!(total("events: Ir\ntotals: 42\n"), Some(42));
        assert_eq!(total("events: Ir\n"), None);
        assert!(check(&json!({"per_request": 36_088.0})).starts_with("PASS"));
        let miss = check(&json!({"per_request": 40_000.0}));
        assert!(
            miss.starts_with("MISS") && miss.ends_with("2556 over"),
            "{miss}"
        );
        assert!(check(&json!({"error": "no valgrind"})).contains("no valgrind"));
        let md = markdown(&json!({"per_request": 36_088.0, "requests": 2000,
            "direct_instructions": 1, "proxied_instructions": 2, "test": "t"}));
        assert!(md.contains("36088 per proxied request"), "{md}");
    }

    #[test]
    fn finds_the_library_test_executable() {
        let msgs = [
            r#"{"reason":"compiler-artifact","profile":{"test":false},"target":{"name":"meshpath_proxy"},"executable":null}"#,
            r#"{"reason":"compiler-artifact","profile":{"test":true},"target":{"name":"other"},"executable":"/x/other-1"}"#,
            r#"{"reason":"compiler-artifact","profile":{"test":true},"target":{"name":"meshpath_proxy"},"executable":"/x/meshpath_proxy-2"}"#,
        ]
        .join("\n");
        assert_eq!(
            executable(&msgs),
            Some(PathBuf::from("/x/meshpath_proxy-2"))
        );
        assert_eq!(executable("not json"), None);
    }
}
