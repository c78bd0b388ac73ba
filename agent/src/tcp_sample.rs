//! Sampling of live kernel-path TCP connections for Istio's TCP metrics: every
//! `--tcp-metrics-sample-ms`, the kernel's TCP socket iterator runs once in each network namespace
//! where a process of the managed cgroup lives, and adds the bytes each counted connection moved
//! since the last sample (see the eBPF crate's `tcp_sample`). A kernel TCP iterator walks only
//! the namespace of the thread that opens it, and pods have their own, so a dedicated thread
//! enters each namespace in turn and returns to its own after every pass. The data path pays
//! nothing for it: no per-packet callback, only this thread's work every interval.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshpath_datapath::netns::{pod_namespaces, NetnsError, NetnsId};
use meshpath_datapath::tcp_sample::TcpSampler;
use meshpath_datapath::DatapathError;
use tracing::{error, trace, warn};

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("entering network namespace {}", path.display())]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Namespaces(#[from] NetnsError),
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
                    // Every few seconds: trace, so debug logs stay readable.
                    Ok(n) => trace!(namespaces = n, "TCP connections sampled"),
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
    let own_id = NetnsId::of_file(own).ok();
    let mut first_error = None;
    let mut n = 0;
    let namespaces = pod_namespaces(cgroup, &BTreeSet::new())?;
    for (pid, ns) in namespaces {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let here = NetnsId::of_file(&ns).ok() == own_id;
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
