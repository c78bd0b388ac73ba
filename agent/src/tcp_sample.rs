//! Sampling of live kernel-path TCP connections for Istio's TCP metrics: every
//! `--tcp-metrics-sample-ms`, the kernel's TCP socket iterator runs once in each network namespace
//! where a process of the managed cgroup lives, and adds the bytes each counted connection moved
//! since the last sample (see the eBPF crate's `tcp_sample`). A kernel TCP iterator walks only
//! the namespace of the thread that opens it, and pods have their own, so a dedicated thread
//! enters each namespace in turn and returns to its own after every pass. The data path pays
//! nothing for it: no per-packet callback, only this thread's work every interval.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshpath_datapath::tcp_sample::TcpSampler;
use meshpath_datapath::DatapathError;
use tracing::{debug, error, warn};

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("opening {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {}", path.display())]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("returning to the sampler's own network namespace")]
    Return(#[source] std::io::Error),
    #[error("running the TCP iterator in {}", path.display())]
    Run {
        path: PathBuf,
        #[source]
        source: Box<DatapathError>,
    },
}

/// Starts the sampling thread; it runs for as long as the agent.
pub fn spawn(sampler: TcpSampler, cgroup: PathBuf, every: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tcp-sample".into())
        .spawn(move || {
            let own = match File::open("/proc/thread-self/ns/net") {
                Ok(f) => f,
                Err(error) => {
                    error!(%error, "TCP sampling not started: own network namespace unknown");
                    return;
                }
            };
            loop {
                std::thread::sleep(every);
                match sample_all(&sampler, &cgroup, &own) {
                    Ok(n) => debug!(namespaces = n, "TCP connections sampled"),
                    Err(e @ SampleError::Return(_)) => {
                        error!(error = %e, "TCP sampling stopped");
                        return;
                    }
                    Err(error) => warn!(%error, "TCP sampling pass incomplete"),
                }
            }
        })
        .map(drop)
}

/// One pass: the iterator in every namespace of the cgroup's processes. Returns how many.
fn sample_all(sampler: &TcpSampler, cgroup: &Path, own: &File) -> Result<usize, SampleError> {
    let own_id = ns_id(own);
    let mut first_error = None;
    let mut n = 0;
    for (path, ns) in namespaces(cgroup) {
        let here = ns_id(&ns) == own_id;
        // SAFETY: setns on a namespace fd we own; it changes only this thread.
        if !here && unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            first_error.get_or_insert(SampleError::Enter {
                path,
                source: std::io::Error::last_os_error(),
            });
            continue;
        }
        let ran = sampler.run();
        // SAFETY: as above, back to the namespace this thread started in.
        if !here && unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(SampleError::Return(std::io::Error::last_os_error()));
        }
        match ran {
            Ok(()) => n += 1,
            Err(source) => {
                first_error.get_or_insert(SampleError::Run {
                    path,
                    source: Box::new(source),
                });
            }
        }
    }
    first_error.map_or(Ok(n), Err)
}

fn ns_id(f: &File) -> Option<(u64, u64)> {
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// The distinct network namespaces of the processes in `cgroup` and its descendants, each opened
/// once (a process that exits meanwhile is skipped).
fn namespaces(cgroup: &Path) -> Vec<(PathBuf, File)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter(|l| !l.is_empty()) {
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            match File::open(&path) {
                Ok(f) => out.push((path, f)),
                Err(source) => debug!(error = %SampleError::Open { path, source }, "skipped"),
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_of_a_cgroup_tree_are_found_once_each() {
        // A fake cgroup tree: two leaves listing this process (one namespace), one listing a pid
        // that does not exist (skipped).
        let dir = std::env::temp_dir().join(format!("mp-tcp-sample-{}", std::process::id()));
        let me = std::process::id().to_string();
        for (sub, procs) in [("a", me.as_str()), ("a/b", me.as_str()), ("c", "999999999")] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join("cgroup.procs"), format!("{procs}\n")).unwrap();
        }
        let found = namespaces(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found.len(),
            1,
            "{:?}",
            found.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        let own = File::open("/proc/self/ns/net").unwrap();
        assert_eq!(ns_id(&found[0].1), ns_id(&own));
    }
}
