//! The `Node`: construction of all per-run kernel objects and their removal on Drop.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};

use crate::children::Children;
use crate::net::{self, MAX_PODS};
use crate::pod::{Pod, Target};
use crate::runid::RunId;
use crate::sys::{bpffs_root, cgroup2_root, require_root};
use crate::{cgroup, stale};

/// One test "node" with its pods. See the crate docs for the layout. Dropping it (also while a
/// panic unwinds) kills every process started in it and removes every object it created.
pub struct Node {
    id: RunId,
    node_netns: String,
    /// Managed cgroup `mpt-<id>`: the agent under test attaches its programs here.
    cgroup: PathBuf,
    /// Unmanaged sibling `mpt-<id>-out`, deliberately NOT below the managed one.
    outside_cgroup: PathBuf,
    pin_dir: PathBuf,
    work_dir: PathBuf,
    pods: Vec<Pod>,
    outside: Pod,
    pub(crate) children: Arc<Children>,
}

impl Node {
    /// Build a node with `pods` pods (at least 1: the `outside` pseudo-pod shares pod 0's
    /// namespace). Removes leftovers of dead earlier runs first.
    pub fn new(pods: usize) -> Result<Node> {
        require_root()?;
        ensure!(
            (1..=MAX_PODS).contains(&pods),
            "Node::new: pod count must be in 1..={MAX_PODS}, got {pods}"
        );
        let cg_root = cgroup2_root()?;
        let bpf_root = bpffs_root()?;
        let temp_root = std::env::temp_dir();
        stale::cleanup(&cg_root, &bpf_root, &temp_root);

        // Claim an id by creating the managed cgroup: mkdir is atomic and fails if the directory
        // exists, so an (unlikely) id collision is detected instead of sharing objects.
        let mut claimed = None;
        for _ in 0..16 {
            let id = RunId::new();
            let path = cg_root.join(id.base());
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    claimed = Some((id, path));
                    break;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("creating cgroup {}", path.display()))
                }
            }
        }
        let Some((id, cgroup)) = claimed else {
            bail!(
                "could not find an unused run id under {}",
                cg_root.display()
            );
        };

        let base = id.base();
        let children = Arc::new(Children::default());
        let make_pod = |label: String, netns: String, cgroup: PathBuf, i: usize| Pod {
            label,
            netns,
            cgroup,
            ip: net::pod_ip(i),
            children: Arc::clone(&children),
            resolv_conf: None,
        };
        let pods: Vec<Pod> = (0..pods)
            .map(|i| {
                make_pod(
                    format!("p{i}"),
                    format!("{base}-p{i}"),
                    cgroup.join(format!("p{i}")),
                    i,
                )
            })
            .collect();
        let outside_cgroup = cg_root.join(format!("{base}-out"));
        let outside = make_pod(
            "outside".to_owned(),
            pods[0].netns.clone(),
            outside_cgroup.clone(),
            0,
        );
        // From here on every early return drops `node`, which removes whatever was created so
        // far (Drop tolerates objects that do not exist).
        let node = Node {
            node_netns: format!("{base}-n"),
            cgroup,
            outside_cgroup,
            pin_dir: bpf_root.join(&base),
            work_dir: temp_root.join(&base),
            pods,
            outside,
            children,
            id,
        };
        node.build()
            .with_context(|| format!("building test node {base}"))?;
        Ok(node)
    }

    fn build(&self) -> Result<()> {
        cgroup::create(&self.outside_cgroup)?;
        for pod in &self.pods {
            cgroup::create(&pod.cgroup)?;
        }
        std::fs::create_dir(&self.pin_dir)
            .with_context(|| format!("creating {}", self.pin_dir.display()))?;
        std::fs::create_dir(&self.work_dir)
            .with_context(|| format!("creating {}", self.work_dir.display()))?;
        net::add_netns(&self.node_netns)?;
        net::setup_bridge(&self.node_netns)?;
        for (i, pod) in self.pods.iter().enumerate() {
            net::add_netns(&pod.netns)?;
            net::setup_pod(&self.node_netns, &pod.netns, i)?;
        }
        Ok(())
    }

    /// This run's id (every name of the run starts with `mpt-<id>`).
    pub fn id(&self) -> &RunId {
        &self.id
    }

    /// The managed cgroup v2 directory: attach the programs under test here.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// The unmanaged cgroup of [`Node::outside`].
    pub fn outside_cgroup_path(&self) -> &Path {
        &self.outside_cgroup
    }

    /// bpffs directory for this run's pinned maps and links (created empty).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Scratch directory for manifests and logs (server stderr goes to `<label>-<name>.log`).
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Name of the node network namespace holding `br0` and the host ends of the veths.
    pub fn node_netns_name(&self) -> &str {
        &self.node_netns
    }

    /// Pod `i`. Panics if out of range, like slice indexing.
    pub fn pod(&self, i: usize) -> &Pod {
        &self.pods[i]
    }

    /// All pods.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Pseudo-pod in pod 0's network namespace (same address, same reachability) but in the
    /// unmanaged cgroup, so the programs attached to [`Node::cgroup_path`] do not see it.
    pub fn outside(&self) -> &Pod {
        &self.outside
    }

    /// The pod a [`Target`] designates.
    pub fn target(&self, t: Target) -> &Pod {
        match t {
            Target::Pod(i) => self.pod(i),
            Target::Outside => &self.outside,
        }
    }

    /// Register an already spawned process (e.g. the agent under test) so Drop kills and reaps
    /// it. Returns its pid.
    pub fn adopt(&self, label: &str, child: std::process::Child) -> u32 {
        self.children.add(label.to_owned(), child, None)
    }

    /// Print the tail of every registered process's log to stderr (the test's output).
    fn dump_logs(&self) {
        for (label, path) in self.children.logs() {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.trim().is_empty() {
                eprintln!("--- {}: {label} logged nothing ---", self.id.base());
                continue;
            }
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "--- {} log of {label} ({}) ---",
                self.id.base(),
                path.display()
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
    }

    /// Remove everything; returns the errors instead of panicking (Drop may run while unwinding,
    /// where a second panic would abort the whole test binary).
    fn teardown(&mut self) -> Vec<String> {
        let mut errs = Vec::new();
        // 1. Processes we own: kill and reap.
        for (label, log) in self.children.kill_all() {
            if std::thread::panicking() {
                eprintln!(
                    "{}: {label} had exited before teardown (log: {log:?})",
                    self.id.base()
                );
            }
        }
        // 2. Cgroups: kill anything else still inside (by pid), then rmdir bottom-up. Must come
        //    before the namespaces so no process keeps a namespace alive.
        for cg in [&self.cgroup, &self.outside_cgroup] {
            if let Err(e) = cgroup::kill_and_remove(cg) {
                errs.push(format!("{e:#}"));
            }
        }
        // 3. Network namespaces (veths and bridge go with them).
        for ns in self
            .pods
            .iter()
            .map(|p| p.netns.as_str())
            .chain([self.node_netns.as_str()])
        {
            if let Err(e) = net::del_netns(ns) {
                errs.push(format!("{e:#}"));
            }
        }
        // 4. Files: pinned objects in bpffs, then the scratch directory.
        for dir in [&self.pin_dir, &self.work_dir] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => errs.push(format!("removing {}: {e}", dir.display())),
            }
        }
        errs
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for e in self.teardown() {
            eprintln!("meshpath-tests: cleanup of {}: {e}", self.id.base());
        }
    }
}
