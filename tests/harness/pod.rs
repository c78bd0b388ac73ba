//! Pods: a network namespace plus a cgroup, and how to start processes inside both.

use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::children::Children;
use crate::net::netns_path;

/// Where to run a client: in pod `i`, or in the [`crate::Node::outside`] pseudo-pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Pod(usize),
    Outside,
}

impl From<usize> for Target {
    fn from(i: usize) -> Target {
        Target::Pod(i)
    }
}

/// One pod: a network namespace (with `eth0` on the node bridge) and a cgroup. The `outside`
/// pseudo-pod shares pod 0's namespace but sits in the unmanaged cgroup.
pub struct Pod {
    pub(crate) label: String,
    pub(crate) netns: String,
    pub(crate) cgroup: PathBuf,
    pub(crate) ip: Ipv4Addr,
    pub(crate) children: Arc<Children>,
    /// Bind-mounted over /etc/resolv.conf (in a private mount namespace) for every process the
    /// pod starts, as a kubelet gives each pod the cluster's resolver.
    pub(crate) resolv_conf: Option<PathBuf>,
}

impl Pod {
    /// The pod's address on the node bridge.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Name of the pod's network namespace (as in `ip netns list`).
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// The pod's cgroup v2 directory.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// A pseudo-pod sharing this pod's network namespace (and its children's reaping) but whose
    /// processes run in `cgroup`, which must lie inside the node's own cgroups so the node's
    /// teardown removes it (e.g. a kubelet-style pod cgroup built under the node's cgroup).
    pub fn in_cgroup(&self, label: &str, cgroup: PathBuf) -> Pod {
        Pod {
            label: label.to_owned(),
            netns: self.netns.clone(),
            cgroup,
            ip: self.ip,
            children: self.children.clone(),
            resolv_conf: self.resolv_conf.clone(),
        }
    }

    /// A pseudo-pod in another network namespace of this run (an outside client's, say, made by
    /// the test and removed by its own guard) at address `ip`, with this pod's cgroup and
    /// children: [`crate::Node::outside`]`.in_netns(..)` runs where no program of the node
    /// attaches.
    pub fn in_netns(&self, label: &str, netns: &str, ip: Ipv4Addr) -> Pod {
        Pod {
            label: label.to_owned(),
            netns: netns.to_owned(),
            cgroup: self.cgroup.clone(),
            ip,
            children: self.children.clone(),
            resolv_conf: self.resolv_conf.clone(),
        }
    }

    /// The same pod (namespace, cgroup, children) whose processes see `resolv_conf` as their
    /// /etc/resolv.conf: each runs in its own mount namespace with the file bind-mounted there.
    pub fn with_resolv_conf(&self, resolv_conf: PathBuf) -> Pod {
        Pod {
            label: self.label.clone(),
            netns: self.netns.clone(),
            cgroup: self.cgroup.clone(),
            ip: self.ip,
            children: self.children.clone(),
            resolv_conf: Some(resolv_conf),
        }
    }

    /// The file bind-mounted over /etc/resolv.conf for this pod's processes, if any.
    pub fn resolv_conf(&self) -> Option<&Path> {
        self.resolv_conf.as_deref()
    }

    /// `p<i>` or `outside`; used in log file names and messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A `Command` whose process runs inside this pod: before exec, the child moves itself into
    /// the pod's cgroup and then enters the pod's network namespace.
    ///
    /// The cgroup is joined FIRST and directly (not through `ip netns exec`): `ip netns exec`
    /// gives its command a private mount namespace with a fresh /sys in which the cgroup v2 tree
    /// is not mounted, so nothing started that way could join a cgroup. Children of the process
    /// inherit both cgroup and namespace.
    ///
    /// Processes spawned from this `Command` directly are still killed by the node's Drop (it
    /// kills whatever is left in its cgroups), but are not reaped; prefer [`Pod::spawn`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        // Both files are opened before fork: pre_exec may only make async-signal-safe calls,
        // and open()/allocation are not among them in a multi-threaded process.
        let procs_path = self.cgroup.join("cgroup.procs");
        let procs: OwnedFd = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .with_context(|| format!("opening {}", procs_path.display()))?
            .into();
        let ns_path = netns_path(&self.netns);
        let ns: OwnedFd = File::open(&ns_path)
            .with_context(|| format!("opening {}", ns_path.display()))?
            .into();
        let mut cmd = Command::new(program);
        // SAFETY: the closure only calls write(2) and setns(2) on fds that stay open for the
        // Command's lifetime (the closure owns them) and builds io::Errors from errno, which
        // does not allocate. Both fds are O_CLOEXEC (std's default), so they close at exec.
        unsafe {
            cmd.pre_exec(move || {
                // Writing "0" moves the writing process itself.
                let n = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if let Some(resolv) = &self.resolv_conf {
            let src = CString::new(resolv.as_os_str().as_bytes())
                .context("resolv.conf path with a NUL byte")?;
            // SAFETY: unshare(2) and mount(2) with C strings built before fork; no allocation.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::unshare(libc::CLONE_NEWNS) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // Private propagation: the bind mount below must not leak to the host.
                    let flags = libc::MS_REC | libc::MS_PRIVATE;
                    let none = c"none".as_ptr();
                    if libc::mount(
                        none,
                        c"/".as_ptr(),
                        std::ptr::null(),
                        flags,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    let target = c"/etc/resolv.conf".as_ptr();
                    let bind = libc::MS_BIND;
                    if libc::mount(
                        src.as_ptr(),
                        target,
                        std::ptr::null(),
                        bind,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Ok(cmd)
    }

    /// Spawn `cmd` (built with [`Pod::command`]) and register it with the node, whose Drop kills
    /// (SIGKILL) and reaps it. Returns the pid.
    pub fn spawn(&self, mut cmd: Command) -> Result<u32> {
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?} in {}", cmd.get_program(), self.label))?;
        Ok(self.children.add(self.label.clone(), child, None))
    }
}
