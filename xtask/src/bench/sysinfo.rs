//! The stamp on every result: machine, kernel, tool versions, commit, settings, time. Numbers
//! from a 2-core VM are only meaningful next to this.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::proc;
use crate::paths::workspace_root;

#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started_utc: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub fortio_version: String,
    /// `git rev-parse --short HEAD`, with `-dirty` when the tree has uncommitted changes (the
    /// binaries were built from the working tree, not from the commit alone).
    pub meshpath_commit: String,
    /// "release build", or the binary given with `--agent` (e.g. the profile-guided build).
    pub build_profile: String,
    pub repeats: u32,
    pub duration_s: f64,
    pub payload: String,
    /// Whether the agent binary knows `--socket-redirect`.
    pub agent_socket_redirect_flag: bool,
    pub iptables_version: String,
    /// The echo server's listening socket (see `--fortio-listen`).
    pub fortio_server_listen: &'static str,
}

pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

pub fn git_commit() -> String {
    let root = workspace_root();
    let root = root.to_string_lossy();
    let Ok(head) = proc::output("git", &["-C", &root, "rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = proc::output(
        "git",
        &["-C", &root, "status", "--porcelain", "--untracked-files=no"],
    )
    .is_ok_and(|s| !s.trim().is_empty());
    format!("{}{}", head.trim(), if dirty { "-dirty" } else { "" })
}

pub fn iptables_version() -> String {
    proc::output("iptables", &["--version"])
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unavailable: {e:#}"))
}

/// (folder name `YYYYMMDDTHHMMSSZ`, ISO form `YYYY-MM-DDTHH:MM:SSZ`) for now, in UTC.
pub fn utc_now() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, mo, d, h, mi, s) = civil(secs);
    (
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z"),
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
    )
}

/// Unix seconds → UTC calendar date and time (Howard Hinnant's days-to-civil algorithm), to
/// avoid a date-time dependency for one timestamp.
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::civil;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_767_225_599), (2025, 12, 31, 23, 59, 59));
    }
}
