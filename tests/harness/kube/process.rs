//! The control-plane processes of a [`super::KubeCluster`]: starting them with their output in a
//! log file, stopping them by pid (SIGTERM, then SIGKILL), free loopback ports, readiness polls
//! and removal of processes left behind by test runs that died without unwinding.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::runid::RunId;
use crate::sys::pid_alive;
use crate::NAME_PREFIX;

/// Suffix of a cluster's run directory, `<temp>/mpt-<id>-kube`.
pub(crate) const RUN_DIR_SUFFIX: &str = "-kube";

/// Names of the binaries the harness runs; stale cleanup only ever signals processes running one
/// of these.
const OUR_BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// One started process. Owning the `Child` means the pid cannot be recycled before we reap it,
/// so signalling it by pid only ever reaches the process we started.
pub(crate) struct Proc {
    pub(crate) label: &'static str,
    pub(crate) log: PathBuf,
    child: Child,
}

impl Proc {
    /// Start `cmd` with stdin closed and stdout/stderr appended to `log`.
    pub(crate) fn spawn(label: &'static str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        // Restarts append to the same log; a marker line keeps the runs apart.
        writeln!(file, "===== meshpath-tests: starting {label} =====")?;
        // A process group of its own: a Ctrl-C at the terminal (sent to the foreground group)
        // reaches the test or demo, which then stops the control plane in order, not etcd first.
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {label} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            label,
            log: log.to_owned(),
            child,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("wait failed: {e}")),
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; always reaps. Returns how long it took and
    /// whether SIGKILL was needed.
    pub(crate) fn stop(mut self, grace: Duration) -> (Duration, bool) {
        let t0 = Instant::now();
        if self.exited().is_some() {
            return (t0.elapsed(), false);
        }
        if let Ok(pid) = libc::pid_t::try_from(self.pid()) {
            // SAFETY: plain syscall on the pid of our own, not yet reaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        while t0.elapsed() < grace {
            if self.exited().is_some() {
                return (t0.elapsed(), false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (t0.elapsed(), true)
    }

    /// The last `n` lines of the log.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }
}

/// A `Proc` dropped without [`Proc::stop`] (a start-up that failed half-way) is killed, so no
/// early return leaves a server running.
impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            // `Child` remembers a reaped status, so this never signals a recycled pid.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A loopback port that was free a moment ago. Another process can take it before our server
/// binds it; callers detect that (the server exits) and retry with a fresh port.
pub(crate) fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Whether `curl` gets a 2xx for `url` (TLS verified against `ca` when given).
pub(crate) fn http_ok(url: &str, ca: Option<&Path>) -> bool {
    let mut cmd = Command::new("curl");
    cmd.args(["-sf", "-o", "/dev/null", "--max-time", "2", url]);
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    cmd.stdin(Stdio::null()).stderr(Stdio::null());
    cmd.status().is_ok_and(|s| s.success())
}

/// Poll `ready` every 100 ms until it is true, `proc` exits, or `timeout` passes.
pub(crate) fn wait_ready(
    proc: &mut Proc,
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = proc.exited() {
            bail!(
                "{} exited ({status}) before {what}; log {}:\n{}",
                proc.label,
                proc.log.display(),
                proc.log_tail(30)
            );
        }
        if t0.elapsed() > timeout {
            bail!(
                "{} not {what} after {timeout:?}; log {}:\n{}",
                proc.label,
                proc.log.display(),
                proc.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a run id in a harness name belongs to a process that is gone.
fn is_stale(name: &str) -> bool {
    RunId::parse_name(name).is_some_and(|id| id.pid() != std::process::id() && !pid_alive(id.pid()))
}

/// SIGKILL control-plane processes of dead test runs and remove their run directories. A process
/// qualifies only if it runs one of [`OUR_BINARIES`] and one of its arguments points into a
/// `<temp>/mpt-<pid>-<tag>-kube` directory whose owner pid is gone: those were started by the
/// harness of a run that was killed (SIGKILL from a timeout, abort) and nobody else will stop them.
pub(crate) fn cleanup_stale(temp_root: &Path) {
    let prefix = temp_root.join(NAME_PREFIX).display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ours = args
            .first()
            .and_then(|a0| Path::new(a0).file_name())
            .and_then(|n| n.to_str())
            .is_some_and(|n| OUR_BINARIES.contains(&n));
        if !ours {
            continue;
        }
        let stale_run = args.iter().any(|a| {
            a.find(&prefix).is_some_and(|at| {
                let rest = &a[at + prefix.len() - NAME_PREFIX.len()..];
                let dir = rest.split('/').next().unwrap_or("");
                dir.ends_with(RUN_DIR_SUFFIX) && is_stale(dir)
            })
        });
        if stale_run {
            eprintln!("meshpath-tests: killing leftover {} (pid {pid})", args[0]);
            crate::sys::kill_pid(pid);
        }
    }
    let Ok(rd) = std::fs::read_dir(temp_root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(NAME_PREFIX) && name.ends_with(RUN_DIR_SUFFIX) && is_stale(&name) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
