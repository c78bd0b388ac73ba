//! How many worker threads the agent's runtimes get: the CPUs this process may actually use,
//! as ztunnel sizes its workers. A node proxy that starts more workers than its CPU quota
//! allows gets throttled by the cgroup (every worker stalls until the next period), and one
//! that starts fewer than its affinity mask allows leaves cores idle under load.
//!
//! The limit is the smaller of the scheduler affinity mask and the cgroup v2 `cpu.max` quota
//! (rounded up: a quota of 1.5 CPUs still runs two threads part of the time). The parsing is
//! pure; only [`detect`] reads the system.

use std::path::Path;

/// `cpu.max` of cgroup v2: `"max 100000"` (no quota) or `"150000 100000"` (1.5 CPUs).
/// Returns the quota in CPUs, `None` when unlimited or unreadable.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then_some(quota / period)
}

/// The cgroup v2 path of this process from `/proc/self/cgroup` (the `0::` line).
pub fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Workers for `affinity` usable CPUs and a quota of `quota` CPUs; `flag` (from
/// `--worker-threads`) wins when given. Never 0.
pub fn worker_threads(flag: Option<usize>, affinity: usize, quota: Option<f64>) -> usize {
    if let Some(n) = flag.filter(|n| *n > 0) {
        return n;
    }
    let by_quota = quota.map_or(usize::MAX, |q| q.ceil().max(1.0) as usize);
    affinity.min(by_quota).max(1)
}

/// The CPUs in this thread's scheduler affinity mask (what `taskset` or a cpuset allows).
pub fn affinity() -> Option<usize> {
    // SAFETY: `cpu_set_t` is plain data; sched_getaffinity fills at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        usize::try_from(libc::CPU_COUNT(&set)).ok()
    }
}

/// The tightest `cpu.max` quota from this process's cgroup up to the root: a parent's quota
/// caps its children too.
pub fn cgroup_quota(mount: &Path) -> Option<f64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut dir = mount.join(parse_proc_cgroup(&own)?.trim_start_matches('/'));
    let mut tightest: Option<f64> = None;
    loop {
        if let Some(q) = std::fs::read_to_string(dir.join("cpu.max"))
            .ok()
            .as_deref()
            .and_then(parse_cpu_max)
        {
            tightest = Some(tightest.map_or(q, |t| t.min(q)));
        }
        if dir == mount || !dir.pop() || !dir.starts_with(mount) {
            return tightest;
        }
    }
}

/// Workers for this process: `flag`, else its affinity and cgroup quota (falling back on
/// what the standard library sees when the affinity cannot be read).
pub fn detect(flag: Option<usize>, cgroup_mount: &Path) -> usize {
    let affinity = affinity()
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    worker_threads(flag, affinity, cgroup_quota(cgroup_mount))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_quota_in_cpus() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cpu_max("200000"), Some(2.0));
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cpu_max("lots 100000"), None);
        assert_eq!(parse_cpu_max("100000 0"), None);
    }

    #[test]
    fn own_cgroup_is_the_v2_line() {
        let text = "12:cpu,cpuacct:/old\n0::/kubepods.slice/pod1/meshpath\n";
        assert_eq!(
            parse_proc_cgroup(text),
            Some("/kubepods.slice/pod1/meshpath")
        );
        assert_eq!(parse_proc_cgroup("3:memory:/x\n"), None);
    }

    #[test]
    fn workers_are_the_tighter_of_affinity_and_quota() {
        assert_eq!(worker_threads(None, 8, None), 8);
        assert_eq!(worker_threads(None, 8, Some(1.5)), 2);
        assert_eq!(worker_threads(None, 2, Some(4.0)), 2);
        assert_eq!(worker_threads(None, 8, Some(0.2)), 1);
        assert_eq!(worker_threads(None, 0, None), 1);
    }

    #[test]
    fn the_flag_wins_unless_zero() {
        assert_eq!(worker_threads(Some(3), 8, Some(1.0)), 3);
        assert_eq!(worker_threads(Some(0), 8, Some(1.0)), 1);
    }

    #[test]
    fn this_process_gets_at_least_one_worker() {
        assert!(detect(None, Path::new("/sys/fs/cgroup")) >= 1);
        assert_eq!(detect(Some(5), Path::new("/sys/fs/cgroup")), 5);
    }
}
