//! Registry of processes the harness started, so `Node`'s Drop can kill and reap them.

use std::path::PathBuf;
use std::process::Child;
use std::sync::Mutex;

/// One registered process. The `Child` is owned here, so reaping it cannot race with anybody
/// else waiting on (or signalling a recycled) pid.
struct Entry {
    label: String,
    child: Child,
    log: Option<PathBuf>,
}

/// Processes started in the pods of one node (servers, and anything passed to `Pod::spawn`).
#[derive(Default)]
pub(crate) struct Children {
    entries: Mutex<Vec<Entry>>,
}

impl Children {
    /// Take ownership of `child`; returns its pid.
    pub(crate) fn add(&self, label: String, child: Child, log: Option<PathBuf>) -> u32 {
        let pid = child.id();
        self.lock().push(Entry { label, child, log });
        pid
    }

    /// SIGKILL and reap every registered process. Returns (label, log file) of the processes that
    /// had already exited by themselves, which is worth reporting when a test fails.
    pub(crate) fn kill_all(&self) -> Vec<(String, Option<PathBuf>)> {
        let mut died_early = Vec::new();
        for mut e in self.lock().drain(..) {
            if let Ok(Some(status)) = e.child.try_wait() {
                died_early.push((format!("{} ({status})", e.label), e.log));
                continue;
            }
            // Child::kill signals by pid; the pid cannot have been recycled because the child
            // is not reaped until the wait below.
            let _ = e.child.kill();
            let _ = e.child.wait();
        }
        died_early
    }

    /// Log files of all registered processes (for dumping when a test panics).
    pub(crate) fn logs(&self) -> Vec<(String, PathBuf)> {
        self.lock()
            .iter()
            .filter_map(|e| e.log.clone().map(|l| (e.label.clone(), l)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic while holding the lock must not stop cleanup.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}
