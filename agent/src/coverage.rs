//! Which of this node's pods the attached cgroup covers (`--source kube --node-name N`).
//!
//! meshpath attaches once, at a cgroup (the kubepods root with `--cgroup auto`; see
//! [`crate::cgroup_layout`] for why not per pod). A pod whose cgroup lies elsewhere (a kubelet
//! with a custom `--cgroup-root`, a `--cgroup` pointing at the wrong place) would silently bypass
//! the mesh, so the agent looks each local pod's cgroup up from its UID and says so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use meshpath_model::{ClusterModel, ObjectRef};

use crate::cgroup_layout::{cgroup_uid, covered_by, find_pod_cgroup};

/// The local pods, sorted by what the attach point means for them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Pod cgroup found below the attach point.
    pub covered: BTreeSet<ObjectRef>,
    /// Pod cgroup found, but not below the attach point: its sockets are not managed.
    pub outside: BTreeSet<(ObjectRef, PathBuf)>,
    /// No cgroup found (not started yet, or a layout meshpath does not know).
    pub not_found: BTreeSet<ObjectRef>,
}

/// Looks up the cgroup of every pod of `model` bound to `node` under the cgroup v2 `mount`.
pub fn local_pods(model: &ClusterModel, node: &str, mount: &Path, attach: &Path) -> Coverage {
    let mut c = Coverage::default();
    for pod in model.pods.values() {
        let p = &pod.placement;
        if p.node_name.as_deref() != Some(node) {
            continue;
        }
        let Some(uid) = p.uid.as_deref() else {
            continue;
        };
        match find_pod_cgroup(mount, cgroup_uid(uid, p.mirror_of.as_deref())) {
            Some(cg) if covered_by(attach, &cg) => {
                c.covered.insert(pod.id.clone());
            }
            Some(cg) => {
                c.outside.insert((pod.id.clone(), cg));
            }
            None => {
                c.not_found.insert(pod.id.clone());
            }
        }
    }
    c
}

/// Logs what changed since the last report: counts at info, each newly uncovered pod at warn.
#[derive(Debug, Default)]
pub struct Reporter {
    last: Coverage,
}

impl Reporter {
    pub fn report(&mut self, now: Coverage, attach: &Path) {
        if now == self.last {
            return;
        }
        for (pod, cgroup) in now.outside.difference(&self.last.outside) {
            warn!(pod = %pod, cgroup = %cgroup.display(), attach = %attach.display(), "local pod's cgroup is not below the attached cgroup: its traffic bypasses meshpath");
        }
        info!(
            covered = now.covered.len(),
            outside = now.outside.len(),
            cgroup_not_found = now.not_found.len(),
            "local pods"
        );
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_model::{Pod, PodPlacement};

    fn pod(name: &str, node: &str, uid: &str) -> Pod {
        Pod {
            id: ObjectRef::new("default", name),
            labels: Default::default(),
            ip: None,
            container_ports: vec![],
            placement: PodPlacement {
                uid: Some(uid.into()),
                node_name: Some(node.into()),
                mirror_of: None,
            },
            workload: name.into(),
            trace_sampling_hundredths: None,
            socket_redirect: None,
        }
    }

    #[test]
    fn sorts_local_pods_by_where_their_cgroup_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = dir.path();
        let root = m.join("kubepods.slice");
        let burstable = root.join("kubepods-burstable.slice");
        std::fs::create_dir_all(burstable.join("kubepods-burstable-poda_1.slice")).expect("mkdir");
        std::fs::create_dir_all(m.join("kubepods/besteffort/podb-2")).expect("mkdir");
        let mut model = ClusterModel::default();
        for p in [
            pod("in", "n1", "a-1"),
            pod("elsewhere", "n1", "b-2"),
            pod("pending", "n1", "c-3"),
            pod("other-node", "n2", "a-1"),
        ] {
            model.pods.insert(p.id.clone(), p);
        }
        let c = local_pods(&model, "n1", m, &root);
        let names = |s: &BTreeSet<ObjectRef>| s.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&c.covered), ["in"]);
        assert_eq!(
            c.outside
                .iter()
                .map(|(p, _)| p.name.clone())
                .collect::<Vec<_>>(),
            ["elsewhere"]
        );
        assert_eq!(names(&c.not_found), ["pending"]);
    }
}
