//! CPU and memory of a proxy under load, from procfs: utime + stime of its processes (all
//! threads, live and exited) before and after each fortio run, and VmRSS sampled every
//! [`SAMPLE_EVERY`] by a background thread for the peak.

use std::net::SocketAddrV4;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// How often the RSS sampler reads /proc/<pid>/status (a few reads per tick: negligible CPU).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The fields after `comm` in a /proc/.../stat line (comm may contain spaces and parentheses).
fn stat_fields(stat: &str) -> Option<(&str, Vec<&str>)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    Some((comm, stat[close + 1..].split_whitespace().collect()))
}

/// utime + stime in seconds from a /proc stat file (process or thread).
fn cpu_of(stat_path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    let (_, f) = stat_fields(&text)?;
    // After comm: state(0) ppid(1) ... utime(11) stime(12).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// Total CPU seconds of `pids` (processes that vanished count 0).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| cpu_of(Path::new(&format!("/proc/{p}/stat"))))
        .sum()
}

/// CPU seconds of the threads of `pid` whose name starts with `prefix` (live threads only).
pub fn thread_cpu_seconds(pid: u32, prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let stat = t.path().join("stat");
            let text = std::fs::read_to_string(&stat).ok()?;
            let (c, _) = stat_fields(&text)?;
            c.starts_with(prefix).then(|| cpu_of(&stat)).flatten()
        })
        .sum()
}

/// Whether `pid` exists and is not a zombie (a child that exited but was not reaped yet).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(stat_fields(&s)?.1.first()? != &"Z"))
        .unwrap_or(false)
}

/// A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Sum of `field` over `pids`.
pub fn sum_status_kib(pids: &[u32], field: &str) -> u64 {
    pids.iter().filter_map(|&p| status_kib(p, field)).sum()
}

/// The children of `parent` (e.g. nginx's workers under its master).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, f) = stat_fields(&s)?;
                    f.get(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// The process whose argv satisfies `pred` (e.g. the agent started with this run's pin dir).
pub fn find_process(pred: impl Fn(&[String]) -> bool) -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv: Vec<String> = raw
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            pred(&argv)
        })
}

/// `Tcp: PassiveOpens` of network namespace `netns` (connections its listeners accepted), read
/// from /proc/net/snmp as seen from inside it.
pub fn passive_opens(netns: &str) -> Option<u64> {
    let out = super::proc::output("ip", &["netns", "exec", netns, "cat", "/proc/net/snmp"]).ok()?;
    snmp_field(&out, "Tcp", "PassiveOpens")
}

/// A field of /proc/net/snmp: a header line and a value line per protocol.
fn snmp_field(text: &str, proto: &str, field: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let i = header.split_whitespace().position(|h| h == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Established TCP connections in `netns` to `dst` (`ss`), None if ss failed.
pub fn established_to(netns: &str, dst: SocketAddrV4) -> Option<usize> {
    let filter = format!("dst {dst}");
    let out = super::proc::output(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "ss",
            "-Htn",
            "state",
            "established",
            &filter,
        ],
    )
    .ok()?;
    Some(out.lines().filter(|l| !l.trim().is_empty()).count())
}

/// Samples the summed VmRSS of a fixed set of pids until dropped; [`RssSampler::take_peak`]
/// returns the largest sample since the previous call.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    overall: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> Result<RssSampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let overall = Arc::new(AtomicU64::new(0));
        let (s, p, o) = (Arc::clone(&stop), Arc::clone(&peak), Arc::clone(&overall));
        let thread = std::thread::Builder::new()
            .name("bench-rss".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let rss = sum_status_kib(&pids, "VmRSS");
                    p.fetch_max(rss, Ordering::Relaxed);
                    o.fetch_max(rss, Ordering::Relaxed);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
            .context("starting the RSS sampler")?;
        Ok(RssSampler {
            stop,
            peak,
            overall,
            thread: Some(thread),
        })
    }

    /// Peak since the last call (KiB), and restart the window.
    pub fn take_peak(&self) -> u64 {
        self.peak.swap(0, Ordering::Relaxed)
    }

    /// Peak since the start (KiB).
    pub fn overall_peak(&self) -> u64 {
        self.overall.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        let (comm, f) = stat_fields(line).unwrap();
        assert_eq!(comm, "a (b) c");
        assert_eq!((f[1], f[11], f[12]), ("1", "250", "50"));
    }

    #[test]
    fn parses_snmp() {
        let t = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm ActiveOpens PassiveOpens\n\
                 Tcp: 1 10 42\n";
        assert_eq!(snmp_field(t, "Tcp", "PassiveOpens"), Some(42));
        assert_eq!(snmp_field(t, "Udp", "InDatagrams"), None);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(status_kib(me, "VmRSS").is_some_and(|k| k > 0));
        assert!(cpu_seconds(&[me]) >= 0.0);
        assert!(find_process(|argv| !argv.is_empty()).is_some());
    }
}
