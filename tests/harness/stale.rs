//! Removal of leftovers from earlier runs whose process died without unwinding (SIGKILL by a
//! runner's timeout, `panic = abort`, a panic inside Drop), so they cannot pile up on the VM.
//!
//! Only names starting with `mpt-<pid>-<tag>` whose `<pid>` is no longer alive are touched, so
//! concurrent runs (alive owner pid) are never disturbed. A recycled pid can make a dead run look
//! alive; its leftovers then survive until that pid is gone, which is harmless.

use std::path::Path;
use std::sync::Mutex;

use crate::net::{del_netns, list_netns};
use crate::runid::RunId;
use crate::sys::pid_alive;
use crate::NAME_PREFIX;

/// Serialises cleanup within this process: parallel `Node::new` calls would otherwise race on
/// the same stale objects and one of them could return while another is still half-way through.
static STALE_LOCK: Mutex<()> = Mutex::new(());

/// Whether `name` belongs to a run whose owner process is gone.
fn is_stale(name: &str) -> bool {
    match RunId::parse_name(name) {
        Some(id) => id.pid() != std::process::id() && !pid_alive(id.pid()),
        None => false,
    }
}

/// Entries of `dir` that are stale harness names.
fn stale_entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(NAME_PREFIX) && is_stale(n))
        })
        .map(|e| e.path())
        .collect()
}

/// Remove stale cgroups (killing processes left in them: they were started by the dead run),
/// network namespaces, bpffs pin directories and temp directories. Best effort: failures are
/// reported on stderr and otherwise ignored, since they must not fail an unrelated test.
pub(crate) fn cleanup(cgroup_root: &Path, bpffs_root: &Path, temp_root: &Path) {
    let _g = STALE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Processes first (they may hold the namespaces), then namespaces, then files.
    for cg in stale_entries(cgroup_root) {
        if let Err(e) = crate::cgroup::kill_and_remove(&cg) {
            eprintln!("meshpath-tests: stale cleanup: {e:#}");
        }
    }
    for ns in list_netns() {
        if ns.starts_with(NAME_PREFIX) && is_stale(&ns) {
            if let Err(e) = del_netns(&ns) {
                eprintln!("meshpath-tests: stale cleanup: {e:#}");
            }
        }
    }
    for dir in stale_entries(bpffs_root)
        .into_iter()
        .chain(stale_entries(temp_root))
    {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("meshpath-tests: stale cleanup of {}: {e}", dir.display());
        }
    }
}
