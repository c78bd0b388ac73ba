//! What the soak measures besides the load: the agent process's memory and open files, and how
//! many entries each of meshpath's pinned BPF maps holds.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// One look at the agent process.
#[derive(Clone, Debug)]
pub struct ProcSample {
    /// Seconds since the soak's load started.
    pub t: u64,
    /// Which agent process (0 = the first, +1 per restart).
    pub generation: u32,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

pub fn proc_sample(pid: u32, t: u64, generation: u32) -> anyhow::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as u64;
    Ok(ProcSample {
        t,
        generation,
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
    })
}

/// Entries of every map pinned in `pin_dir`, by map name. Hash maps (LRU and per-CPU ones too)
/// and socket hashes count their keys; arrays, whose size is fixed, count their non-zero
/// elements (the connection-limit counters among them must fall back to 0).
pub fn map_entries(pin_dir: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let mut pins: Vec<_> = std::fs::read_dir(pin_dir)
        .with_context(|| format!("listing {}", pin_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("MP_"))
        })
        .collect();
    pins.sort();
    for pin in pins {
        let name = pin
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        let show = bpftool(&["map", "show", "pinned"], &pin)?;
        let kind = show["type"].as_str().unwrap_or("").to_owned();
        let n = if kind.starts_with("sock") {
            // A socket hash has no values to dump, but its keys can be walked.
            count_keys(&pin)?
        } else {
            let dump = bpftool(&["map", "dump", "pinned"], &pin)?;
            let entries = dump.as_array().map(Vec::as_slice).unwrap_or_default();
            if kind.contains("array") {
                entries.iter().filter(|e| nonzero(e)).count() as u64
            } else {
                entries.len() as u64
            }
        };
        out.insert(name, n);
    }
    Ok(out)
}

/// Whether an array element (all CPUs' values of a per-CPU one) holds anything but zeros.
fn nonzero(entry: &serde_json::Value) -> bool {
    let bytes = |v: &serde_json::Value| -> bool {
        v.as_array().is_some_and(|b| {
            b.iter().any(|x| {
                x.as_str().is_some_and(|s| {
                    !s.trim_start_matches("0x")
                        .trim_start_matches('0')
                        .is_empty()
                })
            })
        })
    };
    if let Some(values) = entry["values"].as_array() {
        return values.iter().any(|v| bytes(&v["value"]));
    }
    bytes(&entry["value"])
}

fn count_keys(pin: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    let mut key: Option<Vec<String>> = None;
    loop {
        let mut args: Vec<String> = ["-j", "map", "getnext", "pinned"]
            .map(String::from)
            .to_vec();
        args.push(pin.display().to_string());
        if let Some(k) = &key {
            args.push("key".into());
            args.extend(k.iter().cloned());
        }
        let out = Command::new("bpftool").args(&args).output()?;
        if !out.status.success() {
            // The last key has no next one.
            return Ok(n);
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let next: Vec<String> = v["next_key"]
            .as_array()
            .context("bpftool getnext: no next_key")?
            .iter()
            .filter_map(|b| b.as_str().map(String::from))
            .collect();
        n += 1;
        key = Some(next);
        if n > 1_000_000 {
            bail!("{}: more keys than it can hold", pin.display());
        }
    }
}

fn bpftool(args: &[&str], pin: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .arg(pin)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool {} {}: {}",
            args.join(" "),
            pin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing bpftool's JSON")
}
