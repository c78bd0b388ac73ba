//! Small system helpers: running `ip`, finding the cgroup v2 and bpffs mounts, signalling pids.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// Serialises `ip netns add` within this process: the first `ip netns add` on a machine
/// bind-mounts /run/netns onto itself, and two of those racing could stack mounts. Parallel tests
/// of one `cargo test` process are serialised here; separate processes could only race on the
/// machine's very first named namespace, which is accepted.
pub(crate) static NETNS_ADD_LOCK: Mutex<()> = Mutex::new(());

/// Run `ip <args>` and fail with its stderr if it does not succeed.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    run_checked("ip", args)
        .map(drop)
        .context("is iproute2 installed?")
}

/// Runs `program args` and returns its stdout; fails naming the command, its status and its
/// stderr if it does not succeed.
pub fn run_checked(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` inside the named network namespace `ns` (`ip netns exec`), returning its stdout.
pub fn netns_exec(ns: &str, cmd: &[&str]) -> Result<String> {
    let mut args = vec!["netns", "exec", ns];
    args.extend(cmd);
    run_checked("ip", &args)
}

/// Mount points from /proc/self/mounts as (fstype, mountpoint).
fn mounts() -> Result<Vec<(String, PathBuf)>> {
    let text = std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _src = f.next()?;
            let mnt = f.next()?;
            let fstype = f.next()?;
            Some((fstype.to_owned(), PathBuf::from(mnt)))
        })
        .collect())
}

/// The cgroup v2 mount point. On the project machines this is `/sys/fs/cgroup/unified` (hybrid
/// hierarchy); on pure-v2 machines it is `/sys/fs/cgroup`. The harness only ever creates
/// directories below it and never attaches anything to it directly.
pub fn cgroup2_root() -> Result<PathBuf> {
    let preferred = Path::new("/sys/fs/cgroup/unified");
    let all = mounts()?;
    let v2: Vec<PathBuf> = all
        .into_iter()
        .filter(|(t, _)| t == "cgroup2")
        .map(|(_, p)| p)
        .collect();
    if v2.iter().any(|p| p == preferred) {
        return Ok(preferred.to_owned());
    }
    v2.into_iter()
        .next()
        .context("no cgroup2 filesystem is mounted (expected /sys/fs/cgroup/unified)")
}

/// The bpffs mount point, mounting bpffs at /sys/fs/bpf first if it is not mounted yet (it is not
/// mounted at boot on the project VMs).
pub fn bpffs_root() -> Result<PathBuf> {
    static MOUNT_LOCK: Mutex<()> = Mutex::new(());
    let root = PathBuf::from("/sys/fs/bpf");
    let _g = MOUNT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if mounts()?.iter().any(|(t, p)| t == "bpf" && *p == root) {
        return Ok(root);
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let c = |s: &str| CString::new(s).expect("no NUL in literal");
    let (src, target, fstype) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; data is NULL.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        // Another process may have mounted it between our check and our mount.
        if !mounts()?.iter().any(|(t, p)| t == "bpf" && *p == root) {
            return Err(err).context("mount -t bpf bpf /sys/fs/bpf");
        }
    }
    Ok(root)
}

/// Whether a process with this pid exists (in our pid namespace). EPERM also means "exists".
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if p <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence; no signal is delivered.
    let rc = unsafe { libc::kill(p, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// SIGKILL one pid. Only called with pids the harness started, or pids found inside one of the
/// harness's own cgroups (which can only hold processes the harness started and their children).
pub(crate) fn kill_pid(pid: u32) {
    if let Ok(p) = libc::pid_t::try_from(pid) {
        if p > 0 {
            // SAFETY: plain syscall; a stale pid just yields ESRCH.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// Whether this process runs with effective uid 0.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether bpffs is mounted at /sys/fs/bpf or the kernel could mount it (it lists `bpf` in
/// /proc/filesystems). Does not mount anything: [`bpffs_root`] does that when a node is built.
pub(crate) fn bpffs_supported() -> bool {
    let mounted = mounts()
        .map(|m| {
            m.iter()
                .any(|(t, p)| t == "bpf" && p == Path::new("/sys/fs/bpf"))
        })
        .unwrap_or(false);
    mounted
        || std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some("bpf"))
        })
}

/// Whether `ip` (iproute2) can be run.
pub(crate) fn ip_available() -> bool {
    Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the kernel creates a sockhash map (as root; without CAP_BPF this says no). The map
/// is closed again at once.
pub(crate) fn sockhash_supported() -> bool {
    /// `union bpf_attr` for BPF_MAP_CREATE, up to `map_flags`; the kernel zero-extends.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_SOCKHASH,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
    };
    // SAFETY: bpf(2) reads `size_of::<MapCreate>()` bytes of `attr`, which lives across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<MapCreate>(),
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: a descriptor bpf(2) just returned to us and nobody else holds.
    unsafe { libc::close(fd as libc::c_int) };
    true
}

/// Ensure we run as root with a clear message, rather than failing later on some EPERM.
pub(crate) fn require_root() -> Result<()> {
    if !is_root() {
        bail!("the meshpath test harness needs root (network namespaces, cgroups, bpffs)");
    }
    Ok(())
}

/// Whether the running kernel is at least `major.minor` (from `/proc/sys/kernel/osrelease`;
/// `false` when it cannot be read).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release.trim().split(['.', '-']);
    let mut next = || -> u32 { parts.next().and_then(|p| p.parse().ok()).unwrap_or(0) };
    (next(), next()) >= (major, minor)
}
