//! One running pod of the local node: its own network namespace (a veth on the node's bridge, an
//! address from the node's pod range), its own cgroup below the node's managed cgroup (so the
//! agent's programs see it), a root directory holding its projected volumes, and its container
//! as a process group led by the image's launcher.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::spec::{RunSpec, VolumeSource};
use super::volume::Projected;
use crate::net::{self, netns_path};
use crate::pod::Pod;
use crate::{cgroup, Node};

/// Where a pod lives on the node: namespace, cgroup, files. Created before its process starts.
pub(super) struct PodSandbox {
    pub pod: Pod,
    /// Index into the node's pod range (address, veth name `vp<slot>`).
    pub slot: usize,
    /// `<work>/pods/<namespace>_<name>`: `root/` (volumes), `log`, `resolv.conf`.
    pub dir: PathBuf,
    pub volumes: Vec<(usize, Projected)>,
}

/// The container's process and what the kubelet knows of it.
pub(super) struct PodProcess {
    pub sandbox: PodSandbox,
    pub spec: RunSpec,
    child: Option<Child>,
    pub started: Instant,
    pub ready: bool,
    pub exited: Option<ExitStatus>,
    pub restarts: u32,
}

impl PodSandbox {
    /// Create the namespace (wired to the node bridge at `slot`), the cgroup and the files.
    pub fn create(node: &Node, key: &str, uid: &str, slot: usize, search: &str) -> Result<Self> {
        let netns = format!("{}-k{slot}", node.id().base());
        let cg = node.cgroup_path().join(format!("pod{uid}"));
        let dir = node.work_dir().join("pods").join(key.replace('/', "_"));
        let pod = Pod {
            label: key.to_owned(),
            netns,
            cgroup: cg,
            ip: net::pod_ip(slot),
            children: Arc::clone(&node.children),
            resolv_conf: Some(dir.join("resolv.conf")),
        };
        // From here on an early return drops `sandbox`'s parts via `remove`.
        let sandbox = PodSandbox {
            pod,
            slot,
            dir,
            volumes: Vec::new(),
        };
        let built = (|| -> Result<()> {
            std::fs::create_dir_all(sandbox.dir.join("root"))?;
            std::fs::write(
                sandbox.dir.join("resolv.conf"),
                format!(
                    "nameserver {}\nsearch {search}\noptions ndots:5\n",
                    super::KUBE_DNS_IP
                ),
            )?;
            cgroup::create(&sandbox.pod.cgroup)?;
            net::add_netns(&sandbox.pod.netns)?;
            net::setup_pod(node.node_netns_name(), &sandbox.pod.netns, slot)
        })();
        if let Err(e) = built {
            sandbox.remove();
            return Err(e.context(format!("creating the sandbox of pod {key}")));
        }
        Ok(sandbox)
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Remove cgroup (killing what is left in it) and namespace; the files stay for the logs
    /// until the node goes.
    pub fn remove(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if let Err(e) = cgroup::kill_and_remove(&self.pod.cgroup) {
            errs.push(format!("{e:#}"));
        }
        if let Err(e) = net::del_netns(&self.pod.netns) {
            errs.push(format!("{e:#}"));
        }
        errs
    }
}

impl PodProcess {
    /// Project the volumes (`files[i]` for mount `i`, `None` for an empty directory) and start
    /// the launcher in the sandbox.
    pub fn start(
        mut sandbox: PodSandbox,
        spec: RunSpec,
        files: &[Option<BTreeMap<PathBuf, Vec<u8>>>],
        hostname: &str,
    ) -> Result<PodProcess> {
        let root = sandbox.root();
        for (i, (m, f)) in spec.mounts.iter().zip(files).enumerate() {
            let mut p = Projected::new(root.join(&m.path))?;
            if let Some(f) = f {
                p.write(f)?;
            }
            if matches!(m.source, VolumeSource::Keys { .. }) {
                sandbox.volumes.push((i, p));
            }
        }
        let mut p = PodProcess {
            sandbox,
            spec,
            child: None,
            started: Instant::now(),
            ready: false,
            exited: None,
            restarts: 0,
        };
        p.spawn(hostname)?;
        Ok(p)
    }

    /// (Re)start the container's process.
    pub fn spawn(&mut self, hostname: &str) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.sandbox.log_path())
            .context("opening the pod log")?;
        let root = self.sandbox.root();
        let mut cmd = self.sandbox.pod.command(&self.spec.program)?;
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.env("HOME", &root).env("HOSTNAME", hostname);
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        cmd.current_dir(&root)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own session and process group: stopping the pod signals the whole group.
        // SAFETY: setsid(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.spec.program.display()))?;
        self.child = Some(child);
        self.started = Instant::now();
        self.ready = false;
        self.exited = None;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has exited (recorded in `exited`).
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.exited = Some(status);
                    self.ready = false;
                }
            }
        }
        self.exited
    }

    /// Whether a TCP connection to `podIP:containerPort` succeeds, from inside the pod's
    /// namespace (on a short-lived thread: setns(2) changes only the calling thread). A pod
    /// without ports is ready once its process runs.
    pub fn probe(&self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        let Some(&port) = self.spec.ports.first() else {
            return true;
        };
        let ip = self.sandbox.pod.ip;
        let ns = netns_path(&self.sandbox.pod.netns);
        std::thread::spawn(move || probe_in(&ns, ip, port))
            .join()
            .unwrap_or(false)
    }

    /// SIGTERM the process group, wait up to `grace`, then SIGKILL it; reap the leader.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = child.id() as libc::pid_t;
        if child.try_wait().ok().flatten().is_none() {
            // SAFETY: signals the process group this harness created (setsid above), whose
            // leader is our unreaped child, so the id cannot have been recycled.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // SAFETY: as above; the group's other members (if any) are still ours.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn probe_in(ns: &std::path::Path, ip: Ipv4Addr, port: u16) -> bool {
    let Ok(f) = File::open(ns) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: setns on an open namespace fd; affects only this (short-lived) thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return false;
    }
    TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(300)).is_ok()
}
