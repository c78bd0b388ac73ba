//! ConfigMap and Secret volumes laid out as the kubelet's atomic writer does, so an app sees
//! exactly what it would in a cluster:
//!
//! ```text
//!   <mountPath>/..2026_12_04_16_41_08.123456789/config-data.json   the files of one version
//!   <mountPath>/..data -> ..2026_12_04_16_41_08.123456789          switched by rename(2)
//!   <mountPath>/config-data.json -> ..data/config-data.json        one per top-level name
//! ```
//!
//! An update writes a new timestamped directory, points a fresh `..data_tmp` symlink at it and
//! renames that over `..data` (atomic: a reader sees the old or the new version, never a mix),
//! then fixes the per-name symlinks and removes the old directory.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::kube::kubelet::rfc3339;

/// One projected volume directory and the version it holds.
pub(super) struct Projected {
    dir: PathBuf,
    current: Option<BTreeMap<PathBuf, Vec<u8>>>,
    version_dir: Option<OsString>,
}

impl Projected {
    /// Create the (empty) mount directory.
    pub fn new(dir: PathBuf) -> Result<Projected> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Projected {
            dir,
            current: None,
            version_dir: None,
        })
    }

    /// Make the directory hold exactly `files`; returns whether anything changed.
    pub fn write(&mut self, files: &BTreeMap<PathBuf, Vec<u8>>) -> Result<bool> {
        if self.current.as_ref() == Some(files) {
            return Ok(false);
        }
        let version = version_name();
        let vdir = self.dir.join(&version);
        std::fs::create_dir(&vdir).with_context(|| format!("creating {}", vdir.display()))?;
        for (rel, content) in files {
            let path = vdir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, content)
                .with_context(|| format!("writing {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        }
        let tmp = self.dir.join("..data_tmp");
        remove_if_present(&tmp)?;
        symlink(&version, &tmp).with_context(|| format!("creating {}", tmp.display()))?;
        std::fs::rename(&tmp, self.dir.join("..data"))
            .with_context(|| format!("switching {}/..data", self.dir.display()))?;

        let names = |f: &BTreeMap<PathBuf, Vec<u8>>| -> BTreeSet<OsString> {
            f.keys()
                .filter_map(|p| p.components().next())
                .map(|c| c.as_os_str().to_owned())
                .collect()
        };
        let new_names = names(files);
        for name in &new_names {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(name), &link)
                    .with_context(|| format!("creating {}", link.display()))?;
            }
        }
        if let Some(old) = &self.current {
            for gone in names(old).difference(&new_names) {
                remove_if_present(&self.dir.join(gone))?;
            }
        }
        if let Some(old) = self.version_dir.replace(version) {
            std::fs::remove_dir_all(self.dir.join(old))?;
        }
        self.current = Some(files.clone());
        Ok(true)
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// `..2026_12_04_16_41_08.<nanoseconds>`: the kubelet's timestamped name (its suffix is random;
/// nanoseconds keep two versions of one second apart).
fn version_name() -> OsString {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ts = rfc3339(now.as_secs())
        .trim_end_matches('Z')
        .replace(['-', 'T', ':'], "_");
    format!("..{ts}.{:09}", now.subsec_nanos()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn updates_swap_data_and_keep_paths_valid() {
        let dir = std::env::temp_dir().join(format!("mp-volume-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut v = Projected::new(dir.clone()).unwrap();
        let one = BTreeMap::from([
            (PathBuf::from("a"), b"1".to_vec()),
            (PathBuf::from("b"), b"2".to_vec()),
        ]);
        assert!(v.write(&one).unwrap());
        assert!(!v.write(&one).unwrap(), "same content: nothing to do");
        assert_eq!(read(&dir.join("a")), "1");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            PathBuf::from("..data/a")
        );
        let two = BTreeMap::from([
            (PathBuf::from("a"), b"one".to_vec()),
            (PathBuf::from("c"), b"3".to_vec()),
        ]);
        assert!(v.write(&two).unwrap());
        assert_eq!(read(&dir.join("a")), "one");
        assert_eq!(read(&dir.join("c")), "3");
        assert!(std::fs::symlink_metadata(dir.join("b")).is_err());
        let versions = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                let n = n.to_string_lossy();
                n.starts_with("..") && n != "..data"
            })
            .count();
        assert_eq!(versions, 1, "the old version directory is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
