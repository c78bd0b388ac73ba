//! cgroup v2 directories of a run: creation, and removal after emptying them.
//!
//! A cgroup directory can only be removed (rmdir) once it has no child cgroups and no live
//! processes, and a killed process leaves `cgroup.procs` only once it has actually exited, which
//! is asynchronous. Hence the kill / poll / rmdir loop with a deadline below.

use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::sys::kill_pid;

/// How long removal waits for killed processes to leave a cgroup.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// Create one cgroup directory. Fails if it exists: names are per run, so an existing directory
/// means an id collision and the caller must not adopt somebody else's cgroup.
pub(crate) fn create(path: &Path) -> Result<()> {
    std::fs::create_dir(path).with_context(|| format!("creating cgroup {}", path.display()))
}

/// The pids currently in `path` (not in its descendants). Empty if unreadable or gone.
pub(crate) fn procs(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kill every process in `path` and its descendant cgroups (by pid, SIGKILL) and remove the
/// directories bottom-up. A missing directory is not an error. The caller guarantees `path` is
/// one of the harness's own per-run cgroups, so every pid found there was started by the harness
/// (or by a process the harness started).
pub(crate) fn kill_and_remove(path: &Path) -> Result<()> {
    kill_and_remove_until(path, Instant::now() + EMPTY_TIMEOUT)
}

fn kill_and_remove_until(path: &Path, deadline: Instant) -> Result<()> {
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", path.display())),
    };
    let mut first_err = None;
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if let Err(e) = kill_and_remove_until(&entry.path(), deadline) {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    loop {
        for pid in procs(path) {
            kill_pid(pid);
        }
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            // EBUSY: a killed process has not finished exiting yet.
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                let left = procs(path);
                bail!(
                    "cannot remove cgroup {} after {:?} (pids still inside: {left:?}): {e}",
                    path.display(),
                    EMPTY_TIMEOUT
                );
            }
        }
    }
}
