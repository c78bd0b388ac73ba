//! Where the kubelet puts pods in the cgroup v2 tree, and which cgroup meshpath attaches to.
//!
//! **meshpath attaches once, at the kubepods root** (`/sys/fs/cgroup/kubepods.slice` with the
//! systemd driver, `/sys/fs/cgroup/kubepods` with cgroupfs), not once per pod:
//! - cgroup-BPF programs are inherited: the kernel runs, for a socket, the *effective* programs of
//!   its cgroup, which include every program attached (as a bpf_link, which stacks like
//!   `BPF_F_ALLOW_MULTI`) to any ancestor. One attach at kubepods therefore covers every pod
//!   cgroup below it, including pods that start later and pods started while the agent was down
//!   (the pinned links keep the programs attached without the agent).
//! - Per-pod attach would cost one attach per pod start and race the pod: the kubelet creates the
//!   pod cgroup, the runtime starts the containers in it, and a container that connects before
//!   the agent has seen the pod and attached would bypass the mesh for that connection.
//! - Everything outside kubepods (the kubelet, the container runtime, sshd, other system
//!   services) is left alone, unlike an attach at the cgroup root.
//! - hostNetwork pods still get a pod cgroup under kubepods (the kubelet's pod cgroup depends on
//!   the QoS class only, not on the network mode), so they are covered too. Their sockets live in
//!   the host network namespace, so what they get is what a host process would get from
//!   kube-proxy: their `connect()` to a ClusterIP is translated like any pod's. The agent's own
//!   DaemonSet pod is one of them, so the node proxy's sockets are managed as well (no
//!   `--agent-cgroup` needed).
//!
//! The per-pod lookup ([`find_pod_cgroup`]) is not used for attaching: it tells which local pods
//! are covered by the attach point (their cgroup exists and lies below it).
//!
//! The layout is the kubelet's (kubernetes/kubernetes, pkg/kubelet/cm), cited per function below.
//! Only the default `--cgroup-root=/` with `--cgroups-per-qos=true` is recognised; with anything
//! else pass `--cgroup` explicitly.

use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The cgroup v2 mount point on a node (and, in the DaemonSet, the hostPath mounted there).
pub const DEFAULT_CGROUP2_MOUNT: &str = "/sys/fs/cgroup";

/// The node-allocatable cgroup every pod lives under: `defaultNodeAllocatableCgroupName` in
/// node_container_manager_linux.go.
const KUBEPODS: &str = "kubepods";
/// `podCgroupNamePrefix` in pod_container_manager_linux.go: a pod's cgroup is `pod<UID>`.
const POD_PREFIX: &str = "pod";
/// `systemdSuffix` in cgroup_manager_linux.go.
const SLICE: &str = ".slice";

/// The kubelet's `--cgroup-driver`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, - as _>.slice`.
    Systemd,
    /// `kubepods/burstable/pod<uid>`.
    Cgroupfs,
}

/// A pod's QoS class (`status.qosClass`), which picks its parent cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QosClass {
    /// Directly under the kubepods root.
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub const ALL: [QosClass; 3] = [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ];

    /// The QoS cgroup's name component below kubepods: `strings.ToLower(qosClass)` in
    /// `qosContainerManagerImpl.Start` (qos_container_manager_linux.go). Guaranteed pods have no
    /// QoS cgroup of their own: their parent is the root container itself.
    fn component(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

impl FromStr for QosClass {
    type Err = LayoutError;

    /// Parses `status.qosClass` as the API server writes it.
    fn from_str(value: &str) -> Result<Self, LayoutError> {
        match value {
            "Guaranteed" => Ok(QosClass::Guaranteed),
            "Burstable" => Ok(QosClass::Burstable),
            "BestEffort" => Ok(QosClass::BestEffort),
            _ => Err(LayoutError::UnknownQosClass {
                value: value.to_owned(),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{} is not a cgroup v2 mount (no cgroup.controllers there)", mount.display())]
    NotCgroup2 { mount: PathBuf },
    #[error(
        "no kubelet pod cgroups under {}: neither kubepods.slice (systemd driver) nor kubepods \
         (cgroupfs driver) with its burstable and besteffort QoS cgroups; pass --cgroup",
        mount.display()
    )]
    NoKubepods { mount: PathBuf },
    #[error(
        "both {} and {} look like the kubelet's pod cgroups (was the cgroup driver changed?); \
         pass --cgroup",
        systemd.display(),
        cgroupfs.display()
    )]
    Ambiguous { systemd: PathBuf, cgroupfs: PathBuf },
    #[error("{value:?} is not a pod QoS class (Guaranteed, Burstable or BestEffort)")]
    UnknownQosClass { value: String },
}

/// The kubepods root (the cgroup meshpath attaches to) and the driver that laid it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubepodsRoot {
    pub driver: Driver,
    pub path: PathBuf,
}

/// The kubepods root's path under `mount` for `driver`: the cgroup name `[kubepods]` rendered
/// by `CgroupName.ToSystemd` (`/kubepods.slice`) or `CgroupName.ToCgroupfs` (`/kubepods`),
/// both in cgroup_manager_linux.go.
fn root_for(mount: &Path, driver: Driver) -> PathBuf {
    match driver {
        Driver::Systemd => mount.join(format!("{KUBEPODS}{SLICE}")),
        Driver::Cgroupfs => mount.join(KUBEPODS),
    }
}

/// The QoS cgroup of `qos` below `root`; `root` itself for Guaranteed.
fn qos_cgroup(root: &Path, driver: Driver, qos: QosClass) -> PathBuf {
    match (driver, qos.component()) {
        (_, None) => root.to_path_buf(),
        // ToSystemd joins the name's parts with "-" and expands the slice's parents, so
        // [kubepods, burstable] is kubepods.slice/kubepods-burstable.slice.
        (Driver::Systemd, Some(qos)) => root.join(format!("{KUBEPODS}-{qos}{SLICE}")),
        (Driver::Cgroupfs, Some(qos)) => root.join(qos),
    }
}

/// A kubepods root is recognised by its QoS cgroups, which the kubelet creates at start
/// (`qosContainerManagerImpl.Start`): a bare `kubepods` directory left behind by something else,
/// or by a kubelet that ran with the other driver and never started pods, does not count.
fn looks_like_kubepods(root: &Path, driver: Driver) -> bool {
    root.is_dir()
        && [QosClass::Burstable, QosClass::BestEffort]
            .into_iter()
            .all(|qos| qos_cgroup(root, driver, qos).is_dir())
}

/// Finds the kubepods root under the cgroup v2 `mount` and tells the kubelet's driver from its
/// shape.
pub fn detect(mount: &Path) -> Result<KubepodsRoot, LayoutError> {
    if !mount.join("cgroup.controllers").is_file() {
        return Err(LayoutError::NotCgroup2 {
            mount: mount.to_path_buf(),
        });
    }
    let systemd = root_for(mount, Driver::Systemd);
    let cgroupfs = root_for(mount, Driver::Cgroupfs);
    match (
        looks_like_kubepods(&systemd, Driver::Systemd),
        looks_like_kubepods(&cgroupfs, Driver::Cgroupfs),
    ) {
        (true, false) => Ok(KubepodsRoot {
            driver: Driver::Systemd,
            path: systemd,
        }),
        (false, true) => Ok(KubepodsRoot {
            driver: Driver::Cgroupfs,
            path: cgroupfs,
        }),
        (true, true) => Err(LayoutError::Ambiguous { systemd, cgroupfs }),
        (false, false) => Err(LayoutError::NoKubepods {
            mount: mount.to_path_buf(),
        }),
    }
}

/// [`detect`] without the reason.
#[cfg(test)]
fn kubepods_root(mount: &Path) -> Option<(Driver, PathBuf)> {
    detect(mount).ok().map(|root| (root.driver, root.path))
}

/// The cgroup the kubelet gives the pod `uid` of class `qos` below the kubepods `root`:
/// `podContainerManagerImpl.GetPodContainerName` (pod_container_manager_linux.go) appends
/// `pod<uid>` to the QoS cgroup's name, and the driver renders it. systemd escapes each part's
/// "-" as "_" (`escapeSystemdCgroupName`) before joining the parts with "-", so a UID's dashes
/// become underscores there.
pub fn pod_cgroup(root: &Path, driver: Driver, qos: QosClass, uid: &str) -> PathBuf {
    let parent = qos_cgroup(root, driver, qos);
    match driver {
        Driver::Cgroupfs => parent.join(format!("{POD_PREFIX}{uid}")),
        Driver::Systemd => {
            let mut name = String::from(KUBEPODS);
            if let Some(qos) = qos.component() {
                name.push('-');
                name.push_str(qos);
            }
            let uid = uid.replace('-', "_");
            parent.join(format!("{name}-{POD_PREFIX}{uid}{SLICE}"))
        }
    }
}

/// A pod UID as the API server issues them (a UUID) or as the kubelet derives them for static
/// pods (a hex hash): anything else could name a path outside the pod's cgroup.
fn plausible_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The UID the kubelet names a pod's cgroup after: the mirror annotation's value for a mirror
/// pod (`meshpath_source::convert::MIRROR_ANNOTATION`), else `metadata.uid`.
pub fn cgroup_uid<'a>(metadata_uid: &'a str, mirror_annotation: Option<&'a str>) -> &'a str {
    mirror_annotation.unwrap_or(metadata_uid)
}

/// The existing cgroup of the local pod `uid` (see [`cgroup_uid`]) under the cgroup v2 `mount`,
/// whatever the driver and QoS class (a pod's class is fixed for its life, but the caller may
/// not know it).
pub fn find_pod_cgroup(mount: &Path, uid: &str) -> Option<PathBuf> {
    if !plausible_uid(uid) {
        return None;
    }
    [Driver::Systemd, Driver::Cgroupfs]
        .into_iter()
        .flat_map(|driver| {
            let root = root_for(mount, driver);
            QosClass::ALL
                .into_iter()
                .map(move |qos| pod_cgroup(&root, driver, qos, uid))
        })
        .find(|path| path.is_dir())
}

/// Whether programs attached at `attach` run for sockets of processes in `cgroup` (the effective
/// programs of a cgroup include its ancestors').
pub fn covered_by(attach: &Path, cgroup: &Path) -> bool {
    cgroup.starts_with(attach)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f4e5c3a-1b2d-4e6f-8a9b-0c1d2e3f4a5b";

    /// A fake cgroup v2 mount in a temp dir, with the directories a kubelet would create.
    struct FakeMount(tempfile::TempDir);

    impl FakeMount {
        fn new(dirs: &[&str]) -> Self {
            let tmp = tempfile::tempdir().expect("temp dir");
            std::fs::write(tmp.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
            for dir in dirs {
                std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
            }
            FakeMount(tmp)
        }
        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    const SYSTEMD_QOS: [&str; 2] = [
        "kubepods.slice/kubepods-burstable.slice",
        "kubepods.slice/kubepods-besteffort.slice",
    ];
    const CGROUPFS_QOS: [&str; 2] = ["kubepods/burstable", "kubepods/besteffort"];

    #[test]
    fn systemd_pod_paths_follow_to_systemd() {
        let root = Path::new("/sys/fs/cgroup/kubepods.slice");
        let path = |qos| pod_cgroup(root, Driver::Systemd, qos, UID);
        assert_eq!(
            path(QosClass::Burstable),
            root.join("kubepods-burstable.slice/kubepods-burstable-pod0f4e5c3a_1b2d_4e6f_8a9b_0c1d2e3f4a5b.slice")
        );
        assert_eq!(
            path(QosClass::BestEffort),
            root.join("kubepods-besteffort.slice/kubepods-besteffort-pod0f4e5c3a_1b2d_4e6f_8a9b_0c1d2e3f4a5b.slice")
        );
        assert_eq!(
            path(QosClass::Guaranteed),
            root.join("kubepods-pod0f4e5c3a_1b2d_4e6f_8a9b_0c1d2e3f4a5b.slice")
        );
    }

    #[test]
    fn cgroupfs_pod_paths_keep_the_uid() {
        let root = Path::new("/sys/fs/cgroup/kubepods");
        let path = |qos| pod_cgroup(root, Driver::Cgroupfs, qos, UID);
        assert_eq!(
            path(QosClass::Burstable),
            root.join(format!("burstable/pod{UID}"))
        );
        assert_eq!(
            path(QosClass::BestEffort),
            root.join(format!("besteffort/pod{UID}"))
        );
        assert_eq!(path(QosClass::Guaranteed), root.join(format!("pod{UID}")));
    }

    #[test]
    fn detects_each_driver_from_its_qos_cgroups() {
        let systemd = FakeMount::new(&SYSTEMD_QOS);
        assert_eq!(
            kubepods_root(systemd.path()),
            Some((Driver::Systemd, systemd.path().join("kubepods.slice")))
        );
        let cgroupfs = FakeMount::new(&CGROUPFS_QOS);
        assert_eq!(
            kubepods_root(cgroupfs.path()),
            Some((Driver::Cgroupfs, cgroupfs.path().join("kubepods")))
        );
    }

    #[test]
    fn a_bare_kubepods_directory_is_not_a_root() {
        // Stale: the other driver's root without QoS cgroups does not make it ambiguous.
        let mut dirs = SYSTEMD_QOS.to_vec();
        dirs.push("kubepods");
        let mount = FakeMount::new(&dirs);
        assert_eq!(detect(mount.path()).unwrap().driver, Driver::Systemd);

        let empty = FakeMount::new(&["kubepods.slice", "system.slice"]);
        let err = detect(empty.path()).unwrap_err();
        assert!(matches!(err, LayoutError::NoKubepods { .. }), "{err}");
        assert!(err.to_string().contains("pass --cgroup"), "{err}");
    }

    #[test]
    fn both_layouts_complete_is_ambiguous() {
        let dirs: Vec<&str> = SYSTEMD_QOS.iter().chain(&CGROUPFS_QOS).copied().collect();
        let mount = FakeMount::new(&dirs);
        assert!(matches!(
            detect(mount.path()),
            Err(LayoutError::Ambiguous { .. })
        ));
        assert_eq!(kubepods_root(mount.path()), None);
    }

    #[test]
    fn refuses_a_directory_that_is_not_cgroup2() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("kubepods/burstable")).unwrap();
        assert!(matches!(
            detect(tmp.path()),
            Err(LayoutError::NotCgroup2 { .. })
        ));
    }

    #[test]
    fn finds_a_pod_in_any_class_and_driver() {
        let cases = [
            (SYSTEMD_QOS.to_vec(), Driver::Systemd, "kubepods.slice"),
            (CGROUPFS_QOS.to_vec(), Driver::Cgroupfs, "kubepods"),
        ];
        for (qos_dirs, driver, root) in cases {
            for qos in QosClass::ALL {
                let mount = FakeMount::new(&qos_dirs);
                let root = mount.path().join(root);
                let expected = pod_cgroup(&root, driver, qos, UID);
                std::fs::create_dir_all(&expected).unwrap();
                let found = find_pod_cgroup(mount.path(), UID);
                assert_eq!(
                    found.as_deref(),
                    Some(expected.as_path()),
                    "{driver:?} {qos:?}"
                );
                let (_, attach) = kubepods_root(mount.path()).unwrap();
                assert!(covered_by(&attach, &expected));
                assert!(!covered_by(&mount.path().join("system.slice"), &expected));
                assert_eq!(find_pod_cgroup(mount.path(), "some-other-uid"), None);
            }
        }
    }

    #[test]
    fn odd_uids_name_no_cgroup() {
        let mount = FakeMount::new(&CGROUPFS_QOS);
        std::fs::create_dir_all(mount.path().join("kubepods/burstable/pod..")).unwrap();
        for uid in ["", "../burstable", "..", "a/b", "a_b"] {
            assert_eq!(find_pod_cgroup(mount.path(), uid), None, "{uid:?}");
        }
        // Static pods' UIDs are hex hashes without dashes, found through their mirror pods.
        let static_uid = cgroup_uid(UID, Some("6b3f8e2c9d1a4f5e7b0c2d4e6f8a0b1c"));
        assert_eq!(cgroup_uid(UID, None), UID);
        let dir = mount.path().join(format!("kubepods/pod{static_uid}"));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(find_pod_cgroup(mount.path(), static_uid), Some(dir));
    }

    #[test]
    fn parses_status_qos_class() {
        assert_eq!(
            "Burstable".parse::<QosClass>().unwrap(),
            QosClass::Burstable
        );
        assert_eq!(
            "BestEffort".parse::<QosClass>().unwrap(),
            QosClass::BestEffort
        );
        assert_eq!(
            "Guaranteed".parse::<QosClass>().unwrap(),
            QosClass::Guaranteed
        );
        let err = "burstable".parse::<QosClass>().unwrap_err();
        assert!(matches!(err, LayoutError::UnknownQosClass { .. }), "{err}");
    }
}
