use std::fs;
use std::time::Duration;

use meshpath_model::ObjectRef;

use super::*;

const WITHIN: Duration = Duration::from_secs(1);

fn service_yaml(name: &str, port: u16) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n  - port: {port}\n")
}

struct Harness {
    _dir: tempfile::TempDir,
    path: PathBuf,
    model: watch::Receiver<Arc<ClusterModel>>,
    status: watch::Receiver<Arc<SourceStatus>>,
    _watcher: ManifestWatcher,
}

fn start(files: &[(&str, String)]) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        fs::write(dir.path().join(name), text).unwrap();
    }
    let (model_tx, model) = watch::channel(Arc::new(ClusterModel::default()));
    let (status_tx, status) = watch::channel(Arc::new(SourceStatus::default()));
    let watcher = ManifestWatcher::start(dir.path(), model_tx, status_tx).unwrap();
    Harness {
        path: dir.path().to_owned(),
        _dir: dir,
        model,
        status,
        _watcher: watcher,
    }
}

fn port(model: &ClusterModel, name: &str) -> Option<u16> {
    model
        .services
        .get(&ObjectRef::new("default", name))
        .map(|s| s.ports[0].port)
}

impl Harness {
    /// Waits (at most [`WITHIN`]) for a model for which `f` holds; returns how long it took.
    async fn model_where(&mut self, f: impl FnMut(&Arc<ClusterModel>) -> bool) -> Duration {
        let started = Instant::now();
        let found = tokio::time::timeout(WITHIN, self.model.wait_for(f))
            .await
            .is_ok();
        assert!(
            found,
            "no such model within {WITHIN:?}; last: {:?}",
            *self.model.borrow()
        );
        started.elapsed()
    }

    async fn status_where(&mut self, f: impl FnMut(&Arc<SourceStatus>) -> bool) {
        let found = tokio::time::timeout(WITHIN, self.status.wait_for(f))
            .await
            .is_ok();
        assert!(
            found,
            "no such status within {WITHIN:?}; last: {:?}",
            *self.status.borrow()
        );
    }
}

#[tokio::test]
async fn initial_load_is_published_before_start_returns() {
    let mut h = start(&[("web.yaml", service_yaml("web", 80))]);
    assert!(
        h.model.has_changed().unwrap(),
        "the initial load counts as a change"
    );
    assert_eq!(port(&h.model.borrow_and_update(), "web"), Some(80));
    let status = h.status.borrow_and_update();
    assert!(status.errors.is_empty());
    assert_eq!((status.files, status.objects), (1, 1));
}

#[tokio::test]
async fn written_file_reaches_the_model() {
    let mut h = start(&[]);
    assert!(h.model.borrow_and_update().services.is_empty());
    fs::write(h.path.join("web.yaml"), service_yaml("web", 80)).unwrap();
    let took = h.model_where(|m| port(m, "web") == Some(80)).await;
    eprintln!("write → model: {took:?}");
    fs::remove_file(h.path.join("web.yaml")).unwrap();
    h.model_where(|m| m.services.is_empty()).await;
}

#[tokio::test]
async fn rename_replace_is_seen() {
    let mut h = start(&[("web.yaml", service_yaml("web", 80))]);
    // What editors do: write a temporary file, rename it over the original.
    let tmp = h.path.join(".web.yaml.tmp");
    fs::write(&tmp, service_yaml("web", 8080)).unwrap();
    fs::rename(&tmp, h.path.join("web.yaml")).unwrap();
    h.model_where(|m| port(m, "web") == Some(8080)).await;
    // And a rename away from a manifest name removes the objects.
    fs::rename(h.path.join("web.yaml"), h.path.join("web.yaml.bak")).unwrap();
    h.model_where(|m| m.services.is_empty()).await;
}

#[tokio::test]
async fn broken_edit_keeps_the_model_and_reports_the_error() {
    let mut h = start(&[("web.yaml", service_yaml("web", 80))]);
    h.model.borrow_and_update();
    fs::write(h.path.join("web.yaml"), service_yaml("web", 0)).unwrap();
    h.status_where(|s| !s.errors.is_empty()).await;
    {
        let status = h.status.borrow();
        let message = status.errors[0].to_string();
        assert_eq!(
            message,
            format!(
                "{}: Service default/web: spec.ports[0].port: must be between 1 and 65535, got 0",
                h.path.join("web.yaml").display()
            )
        );
        assert_eq!((status.files, status.objects), (1, 1));
    }
    assert!(
        !h.model.has_changed().unwrap(),
        "a broken edit must not publish a model"
    );
    assert_eq!(port(&h.model.borrow(), "web"), Some(80));

    fs::write(h.path.join("web.yaml"), service_yaml("web", 81)).unwrap();
    h.model_where(|m| port(m, "web") == Some(81)).await;
    h.status_where(|s| s.errors.is_empty()).await;
}

#[tokio::test]
async fn unchanged_model_is_not_published() {
    let mut h = start(&[("web.yaml", service_yaml("web", 80))]);
    h.model.borrow_and_update();
    h.status.borrow_and_update();
    // Same objects, different text; and an unrelated file.
    fs::write(
        h.path.join("web.yaml"),
        format!("# comment\n{}", service_yaml("web", 80)),
    )
    .unwrap();
    fs::write(h.path.join("README.md"), "hello").unwrap();
    tokio::time::sleep(MAX_DELAY * 3).await;
    assert!(!h.model.has_changed().unwrap());
    assert!(!h.status.has_changed().unwrap());
}

#[tokio::test]
async fn burst_of_writes_ends_with_the_last() {
    let mut h = start(&[]);
    for port in 1..=20 {
        fs::write(h.path.join("web.yaml"), service_yaml("web", port)).unwrap();
    }
    h.model_where(|m| port(m, "web") == Some(20)).await;
}

#[test]
fn start_fails_for_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let (model_tx, _model) = watch::channel(Arc::new(ClusterModel::default()));
    let (status_tx, _status) = watch::channel(Arc::new(SourceStatus::default()));
    let Err(e) = ManifestWatcher::start(&missing, model_tx, status_tx) else {
        panic!("started")
    };
    assert!(matches!(e, SourceError::Watch { .. }));
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot watch directory: ", missing.display())),
        "{e}"
    );
}

/// A mounted ConfigMap: `web.yaml -> ..data/web.yaml`, `..data -> ..<timestamp>`; the kubelet
/// updates it by swapping the `..data` symlink with a rename.
#[cfg(unix)]
#[tokio::test]
async fn configmap_volume_update_is_seen() {
    use std::os::unix::fs::symlink;
    let mut h = start(&[]);
    fs::create_dir(h.path.join("..2025_01")).unwrap();
    fs::write(h.path.join("..2025_01/web.yaml"), service_yaml("web", 80)).unwrap();
    symlink("..2025_01", h.path.join("..data")).unwrap();
    symlink("..data/web.yaml", h.path.join("web.yaml")).unwrap();
    h.model_where(|m| port(m, "web") == Some(80)).await;

    fs::create_dir(h.path.join("..2025_02")).unwrap();
    fs::write(h.path.join("..2025_02/web.yaml"), service_yaml("web", 81)).unwrap();
    symlink("..2025_02", h.path.join("..data_tmp")).unwrap();
    fs::rename(h.path.join("..data_tmp"), h.path.join("..data")).unwrap();
    fs::remove_dir_all(h.path.join("..2025_01")).unwrap();
    h.model_where(|m| port(m, "web") == Some(81)).await;
}
