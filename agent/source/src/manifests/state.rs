//! A whole directory → the model, keeping each file's last good objects.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshpath_model::ClusterModel;

use super::notice::SourceNotice;
use super::parse::{parse_file_noting, ParsedObject};
use crate::error::{ObjectKey, SourceError};

/// What survives between two loads of a directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestState {
    /// Per file, the objects of its last version that parsed and validated completely. A file
    /// that was never good has no entry.
    files: BTreeMap<PathBuf, Arc<Vec<ParsedObject>>>,
    /// Which file each object was taken from, so that an object defined in two files stays with
    /// the file that had it first.
    owners: BTreeMap<ObjectKey, PathBuf>,
}

impl ManifestState {
    /// The last good objects of `file`, if it ever was good.
    #[cfg(test)]
    pub fn file_objects(&self, file: &Path) -> Option<&[ParsedObject]> {
        self.files.get(file).map(|objects| objects.as_slice())
    }
}

/// The outcome of [`load_dir`].
#[derive(Debug)]
pub struct Load {
    /// To pass as `previous` to the next [`load_dir`].
    pub state: ManifestState,
    /// The union of every file's last good objects.
    pub model: ClusterModel,
    /// Everything wrong right now, in file order.
    pub errors: Vec<SourceError>,
    /// What the files say that is not an error (Istio warnings, fields accepted but not
    /// enforced, objects not programmed), in file order; already logged.
    pub notices: Vec<SourceNotice>,
    /// Manifest files seen, good or not.
    pub files: usize,
}

/// Whether `path` names a manifest: `*.yaml` or `*.yml`, not hidden (editor swap and lock files,
/// the `..data` directory of a mounted ConfigMap).
pub fn is_manifest_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(OsStr::to_str) else {
        return false;
    };
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Reads every manifest in `dir` (not recursive; symlinks followed) and merges the result with
/// `previous`: a file with any error keeps its objects from `previous` (none if it never was
/// good), a file that is gone loses them.
///
/// An object (kind + namespace/name) defined by two files stays with the file that had it in
/// `previous`; among files that define it for the first time, the lexicographically first path
/// wins. The other definition is reported as [`SourceError::Duplicate`] and dropped, without
/// affecting the rest of its file.
pub fn load_dir(dir: &Path, previous: &ManifestState) -> Load {
    let mut errors = Vec::new();
    let paths = match list(dir) {
        Ok(paths) => paths,
        Err(source) => {
            // Nothing can be said about any file: keep everything as it was.
            errors.push(SourceError::ReadDir {
                dir: dir.to_owned(),
                source,
            });
            let model = build(&previous.files, &previous.owners);
            let files = previous.files.len();
            return Load {
                state: previous.clone(),
                model,
                errors,
                notices: Vec::new(),
                files,
            };
        }
    };
    load_paths(paths, previous)
}

/// [`load_dir`] for a given list of files (`meshpath validate` names them itself). A file that is
/// gone by the time it is read counts as not listed.
pub fn load_paths(paths: Vec<PathBuf>, previous: &ManifestState) -> Load {
    let mut errors = Vec::new();
    let mut notices = Vec::new();
    let mut files = BTreeMap::new();
    let mut seen = 0;
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // Deleted since the listing: the same as not listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                errors.push(SourceError::ReadFile {
                    file: path.clone(),
                    source,
                });
                seen += 1;
                if let Some(objects) = previous.files.get(&path) {
                    files.insert(path, Arc::clone(objects));
                }
                continue;
            }
        };
        seen += 1;
        let (parsed, file_notices) = parse_file_noting(&path, &text);
        notices.extend(file_notices);
        match parsed {
            Ok(objects) => match previous.files.get(&path) {
                Some(old) if **old == objects => files.insert(path, Arc::clone(old)),
                _ => files.insert(path, Arc::new(objects)),
            },
            Err(file_errors) => {
                errors.extend(file_errors);
                match previous.files.get(&path) {
                    Some(old) => files.insert(path, Arc::clone(old)),
                    None => None,
                }
            }
        };
    }

    let owners = assign_owners(&files, &previous.owners, &mut errors);
    let model = build(&files, &owners);
    Load {
        state: ManifestState { files, owners },
        model,
        errors,
        notices,
        files: seen,
    }
}

/// The manifest files of `dir`, sorted.
fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // `fs::metadata` follows symlinks; a dangling one or a directory is not a manifest.
        if is_manifest_name(&path) && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Decides which file each object comes from; see [`load_dir`].
fn assign_owners(
    files: &BTreeMap<PathBuf, Arc<Vec<ParsedObject>>>,
    previous: &BTreeMap<ObjectKey, PathBuf>,
    errors: &mut Vec<SourceError>,
) -> BTreeMap<ObjectKey, PathBuf> {
    let mut owners = BTreeMap::new();
    for (file, objects) in files {
        for object in objects.iter() {
            let key = object.key();
            if previous.get(&key) == Some(file) {
                owners.insert(key, file.clone());
            }
        }
    }
    for (file, objects) in files {
        for object in objects.iter() {
            let key = object.key();
            match owners.get(&key) {
                None => {
                    owners.insert(key, file.clone());
                }
                Some(owner) if owner == file => {}
                Some(owner) => errors.push(SourceError::Duplicate {
                    file: file.clone(),
                    object: key,
                    first_file: owner.clone(),
                }),
            }
        }
    }
    owners
}

fn build(
    files: &BTreeMap<PathBuf, Arc<Vec<ParsedObject>>>,
    owners: &BTreeMap<ObjectKey, PathBuf>,
) -> ClusterModel {
    let mut model = ClusterModel::default();
    for (file, objects) in files {
        for object in objects.iter() {
            if owners.get(&object.key()) != Some(file) {
                continue;
            }
            let mut object = object.clone();
            if let ParsedObject::Service(s) = &mut object {
                s.origin = Some(file.display().to_string());
            }
            // VirtualServices and DestinationRules got their origin (file:line) when parsed.
            object.insert_into(&mut model);
        }
    }
    model
}

#[cfg(test)]
mod tests;
