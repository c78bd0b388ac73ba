//! From a pod's spec (JSON as the API serves it) and the ConfigMaps and Secrets of the cluster to
//! what to run: the launcher, its environment, its ports, its volumes' files. Pure, so a missing
//! key or an unmapped image is found before anything is created, and named the way the kubelet
//! names it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::images::{image_command, seed_app_launchers};

/// Data of every ConfigMap and Secret (Secret values already base64-decoded), by (namespace,
/// name).
#[derive(Default)]
pub(super) struct Objects {
    pub configmaps: HashMap<(String, String), BTreeMap<String, Vec<u8>>>,
    pub secrets: HashMap<(String, String), BTreeMap<String, Vec<u8>>>,
}

/// Why a pod cannot start: the reason (as kubectl shows it) and a message naming the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum PodError {
    /// The image has no entry in [`super::images::IMAGES`].
    NoImage { image: String },
    /// A `configMapKeyRef` / `secretKeyRef` / volume item names a key the object lacks.
    MissingKey {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    /// The ConfigMap or Secret itself does not exist.
    MissingObject {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    /// Something this node does not do (e.g. a second container); the message says what.
    Unsupported { what: String },
    /// The seed's apps could not be built.
    Build { message: String },
}

impl PodError {
    /// The container's waiting reason, as the kubelet reports it.
    pub fn reason(&self) -> &'static str {
        match self {
            PodError::NoImage { .. } => "ErrImageNeverPull",
            PodError::MissingKey { .. } | PodError::MissingObject { .. } => {
                "CreateContainerConfigError"
            }
            PodError::Unsupported { .. } | PodError::Build { .. } => "CreateContainerError",
        }
    }
}

impl fmt::Display for PodError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodError::NoImage { image } => write!(
                f,
                "image \"{image}\" has no command in the local node's image table \
                 (tests/harness/kube/localnode/images.rs): pods run as processes, not containers"
            ),
            // The kubelet's own wording.
            PodError::MissingKey {
                kind,
                namespace,
                name,
                key,
            } => write!(f, "couldn't find key {key} in {kind} {namespace}/{name}"),
            PodError::MissingObject { kind, name, .. } => {
                write!(f, "{} \"{name}\" not found", kind.to_lowercase())
            }
            PodError::Unsupported { what } => write!(f, "not supported by the local node: {what}"),
            PodError::Build { message } => write!(f, "building the seed's apps: {message}"),
        }
    }
}

/// Where a volume's files come from.
#[derive(Clone, Debug)]
pub(super) enum VolumeSource {
    /// `configMap` or `secret`: all keys, or only `items` (key → relative path).
    Keys {
        kind: &'static str,
        name: String,
        items: Option<Vec<(String, String)>>,
        optional: bool,
    },
    /// `emptyDir`, and kinds whose content the node does not project (service account tokens).
    Empty,
}

#[derive(Clone, Debug)]
pub(super) struct VolumeMount {
    /// The volume's name in the pod spec.
    pub name: String,
    /// `mountPath`, relative to the pod's root directory.
    pub path: PathBuf,
    pub source: VolumeSource,
}

/// What to run for a pod.
#[derive(Clone, Debug)]
pub(super) struct RunSpec {
    pub image: String,
    pub program: PathBuf,
    /// Image environment (`{root}` resolved by the caller), then the container's `env`.
    pub env: Vec<(String, String)>,
    /// TCP `containerPort`s: the pod is ready once one of them accepts connections.
    pub ports: Vec<u16>,
    pub mounts: Vec<VolumeMount>,
}

/// Resolve `pod` against `objects`; `root` is the pod's root directory (for the image's env).
pub(super) fn resolve(pod: &Value, objects: &Objects, root: &Path) -> Result<RunSpec, PodError> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let [c] = containers.as_slice() else {
        return Err(PodError::Unsupported {
            what: format!("{} containers in one pod (one is run)", containers.len()),
        });
    };
    let image = c["image"].as_str().unwrap_or_default().to_owned();
    let cmd = image_command(&image).ok_or_else(|| PodError::NoImage {
        image: image.clone(),
    })?;
    if c.get("command").is_some() || c.get("args").is_some() {
        return Err(PodError::Unsupported {
            what: format!(
                "`command`/`args` of container {} (the image table decides)",
                c["name"]
            ),
        });
    }
    let mut env = cmd.env_for(root);
    for e in c["env"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = e["name"].as_str().unwrap_or_default().to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            Some(v.to_owned())
        } else if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
            key_ref("ConfigMap", &objects.configmaps, ns, r)?
        } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            key_ref("Secret", &objects.secrets, ns, r)?
        } else if e.get("valueFrom").is_some() {
            return Err(PodError::Unsupported {
                what: format!("valueFrom of env {name} (fieldRef/resourceFieldRef)"),
            });
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            env.retain(|(k, _)| *k != name);
            env.push((name, v));
        }
    }
    let ports = c["ports"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|p| p["protocol"].as_str().unwrap_or("TCP") == "TCP")
        .filter_map(|p| p["containerPort"].as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .collect();
    let mounts = mounts(pod, c)?;
    // Every mount's content must be there before the container starts, as for the kubelet.
    for m in &mounts {
        volume_files(ns, &m.source, objects)?;
    }
    let program = seed_app_launchers()
        .map_err(|e| PodError::Build {
            message: format!("{e:#}"),
        })?
        .get(cmd.app)
        .cloned()
        .ok_or_else(|| PodError::Build {
            message: format!("no launcher for {}", cmd.app),
        })?;
    Ok(RunSpec {
        image,
        program,
        env,
        ports,
        mounts,
    })
}

fn key_ref(
    kind: &'static str,
    all: &HashMap<(String, String), BTreeMap<String, Vec<u8>>>,
    ns: &str,
    r: &Value,
) -> Result<Option<String>, PodError> {
    let name = r["name"].as_str().unwrap_or_default();
    let key = r["key"].as_str().unwrap_or_default();
    let optional = r["optional"].as_bool().unwrap_or(false);
    let Some(data) = all.get(&(ns.to_owned(), name.to_owned())) else {
        if optional {
            return Ok(None);
        }
        return Err(PodError::MissingObject {
            kind,
            namespace: ns.to_owned(),
            name: name.to_owned(),
        });
    };
    match data.get(key) {
        Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
        None if optional => Ok(None),
        None => Err(PodError::MissingKey {
            kind,
            namespace: ns.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
        }),
    }
}

fn mounts(pod: &Value, c: &Value) -> Result<Vec<VolumeMount>, PodError> {
    let volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in c["volumeMounts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = m["name"].as_str().unwrap_or_default();
        let mount_path = m["mountPath"].as_str().unwrap_or_default();
        let path = relative(mount_path).ok_or_else(|| PodError::Unsupported {
            what: format!("mountPath {mount_path:?} of volume {name}"),
        })?;
        let v =
            volumes
                .iter()
                .find(|v| v["name"] == name)
                .ok_or_else(|| PodError::Unsupported {
                    what: format!("volumeMount {name} names no volume"),
                })?;
        let items = |v: &Value| {
            v["items"].as_array().map(|items| {
                items
                    .iter()
                    .map(|i| {
                        let s = |k: &str| i[k].as_str().unwrap_or_default().to_owned();
                        (s("key"), s("path"))
                    })
                    .collect()
            })
        };
        let source = if let Some(cm) = v.get("configMap") {
            VolumeSource::Keys {
                kind: "ConfigMap",
                name: cm["name"].as_str().unwrap_or_default().to_owned(),
                items: items(cm),
                optional: cm["optional"].as_bool().unwrap_or(false),
            }
        } else if let Some(s) = v.get("secret") {
            VolumeSource::Keys {
                kind: "Secret",
                name: s["secretName"].as_str().unwrap_or_default().to_owned(),
                items: items(s),
                optional: s["optional"].as_bool().unwrap_or(false),
            }
        } else {
            VolumeSource::Empty
        };
        out.push(VolumeMount {
            name: name.to_owned(),
            path,
            source,
        });
    }
    Ok(out)
}

/// `/app/config` → `app/config`; `None` for paths leaving the root (`..`).
fn relative(mount_path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(mount_path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The files (relative path → content) a volume holds now; `None` for an empty directory.
pub(super) fn volume_files(
    ns: &str,
    source: &VolumeSource,
    objects: &Objects,
) -> Result<Option<BTreeMap<PathBuf, Vec<u8>>>, PodError> {
    let VolumeSource::Keys {
        kind,
        name,
        items,
        optional,
    } = source
    else {
        return Ok(None);
    };
    let all = if *kind == "Secret" {
        &objects.secrets
    } else {
        &objects.configmaps
    };
    let Some(data) = all.get(&(ns.to_owned(), name.clone())) else {
        if *optional {
            return Ok(Some(BTreeMap::new()));
        }
        return Err(PodError::MissingObject {
            kind,
            namespace: ns.to_owned(),
            name: name.clone(),
        });
    };
    let mut files = BTreeMap::new();
    match items {
        None => {
            for (k, v) in data {
                files.insert(PathBuf::from(k), v.clone());
            }
        }
        Some(items) => {
            for (key, path) in items {
                let v = data.get(key).ok_or_else(|| PodError::MissingKey {
                    kind,
                    namespace: ns.to_owned(),
                    name: name.clone(),
                    key: key.clone(),
                })?;
                let rel = relative(path).ok_or_else(|| PodError::Unsupported {
                    what: format!("item path {path:?} of {kind} {name}"),
                })?;
                files.insert(rel, v.clone());
            }
        }
    }
    Ok(Some(files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_stay_under_the_root() {
        assert_eq!(
            relative("/app/config").unwrap(),
            PathBuf::from("app/config")
        );
        assert!(relative("/../etc").is_none());
    }

    #[test]
    fn a_missing_key_is_named_as_the_kubelet_does() {
        let pod: Value = serde_json::json!({
            "metadata": {"namespace": "default", "name": "p"},
            "spec": {"containers": [{"name": "c", "image": "wardenlym/golang-app-data:v1",
                "env": [{"name": "X", "valueFrom": {"configMapKeyRef":
                    {"name": "cm", "key": "nope"}}}]}]}
        });
        let mut objects = Objects::default();
        objects
            .configmaps
            .insert(("default".into(), "cm".into()), BTreeMap::new());
        let err = resolve(&pod, &objects, Path::new("/r")).unwrap_err();
        assert_eq!(err.reason(), "CreateContainerConfigError");
        assert_eq!(
            err.to_string(),
            "couldn't find key nope in ConfigMap default/cm"
        );
        let pod2 = serde_json::json!({"metadata": {"namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        let err = resolve(&pod2, &objects, Path::new("/r")).unwrap_err();
        assert_eq!(err.reason(), "ErrImageNeverPull");
        assert!(err.to_string().contains("\"busybox\""), "{err}");
    }
}
