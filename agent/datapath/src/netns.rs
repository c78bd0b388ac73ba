//! The network namespaces of the managed pods, found from the processes of the managed cgroup
//! tree: what the agent enters (on a dedicated thread; setns is per thread) to run what sees only
//! the namespace it is opened in (sock_diag, the kernel's TCP socket iterator).

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("reading the managed cgroup tree {}", path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading network namespace {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A network namespace's identity: the device and inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    /// The namespace at `path` (`/proc/<pid>/ns/net`, `/var/run/netns/NAME`).
    pub fn of(path: &Path) -> Result<Self, NetnsError> {
        let m = std::fs::metadata(path).map_err(|source| NetnsError::Netns {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// The namespace an open nsfs file refers to.
    pub fn of_file(file: &File) -> Result<Self, io::Error> {
        let m = file.metadata()?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// One open namespace file per distinct namespace of the processes under `cgroup`, with a pid
/// that was in it. Processes that exit meanwhile are skipped.
pub fn pod_namespaces(
    cgroup: &Path,
    exclude: &BTreeSet<NetnsId>,
) -> Result<Vec<(u32, File)>, NetnsError> {
    let mut pids = Vec::new();
    cgroup_pids(cgroup, &mut pids)?;
    let mut seen = exclude.clone();
    let mut out = Vec::new();
    for pid in pids {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(id) = NetnsId::of_file(&file) else {
            continue;
        };
        if seen.insert(id) {
            out.push((pid, file));
        }
    }
    Ok(out)
}

/// The pids of `dir`'s `cgroup.procs` and of every descendant cgroup's.
fn cgroup_pids(dir: &Path, pids: &mut Vec<u32>) -> Result<(), NetnsError> {
    let err = |source| NetnsError::Cgroup {
        path: dir.to_owned(),
        source,
    };
    match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
        // A child cgroup removed while walking.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            cgroup_pids(&entry.path(), pids)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_of_a_cgroup_tree_are_found_once_each_and_excluded_ones_skipped() {
        // A fake cgroup tree: two cgroups listing this process (one namespace), one listing a
        // pid that does not exist (skipped).
        let dir = std::env::temp_dir().join(format!("mp-netns-{}", std::process::id()));
        let me = std::process::id().to_string();
        // Every cgroup directory has a `cgroup.procs`; the root's lists no process here.
        for (sub, procs) in [
            ("", ""),
            ("a", me.as_str()),
            ("a/b", me.as_str()),
            ("c", "999999999"),
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join("cgroup.procs"), format!("{procs}\n")).unwrap();
        }
        let found = pod_namespaces(&dir, &BTreeSet::new()).unwrap();
        let own = NetnsId::of(Path::new("/proc/self/ns/net")).unwrap();
        let excluded = pod_namespaces(&dir, &[own].into()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(NetnsId::of_file(&found[0].1).unwrap(), own);
        assert!(excluded.is_empty());
    }
}
