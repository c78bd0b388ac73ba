use std::fs;

use meshpath_model::ObjectRef;

use super::*;

pub(crate) fn service_yaml(name: &str, port: i64) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n  - port: {port}\n")
}

fn pod_yaml(name: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n")
}

fn names(model: &ClusterModel) -> Vec<String> {
    let services = model.services.keys().map(|id| format!("svc:{}", id.name));
    let pods = model.pods.keys().map(|id| format!("pod:{}", id.name));
    services.chain(pods).collect()
}

fn port_of(model: &ClusterModel, name: &str) -> u16 {
    model.services[&ObjectRef::new("default", name)].ports[0].port
}

fn rendered(errors: &[SourceError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

#[test]
fn last_good_version_of_a_file_stays_live() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yaml");
    fs::write(
        &web,
        format!("{}---\n{}", service_yaml("web", 80), pod_yaml("web-1")),
    )
    .unwrap();
    let load = load_dir(dir.path(), &ManifestState::default());
    assert!(load.errors.is_empty(), "{:?}", rendered(&load.errors));
    assert_eq!(names(&load.model), ["svc:web", "pod:web-1"]);
    assert_eq!(load.files, 1);

    // Broken edit: port 0, and the Pod renamed. Nothing of it is taken.
    fs::write(
        &web,
        format!("{}---\n{}", service_yaml("web", 0), pod_yaml("web-2")),
    )
    .unwrap();
    let broken = load_dir(dir.path(), &load.state);
    assert_eq!(
        rendered(&broken.errors),
        [format!(
            "{}: Service default/web: spec.ports[0].port: must be between 1 and 65535, got 0",
            web.display()
        )]
    );
    assert_eq!(broken.model, load.model);
    assert_eq!(broken.errors[0].file(), Some(web.as_path()));

    // Fixed: the new objects replace the old ones.
    fs::write(
        &web,
        format!("{}---\n{}", service_yaml("web", 8080), pod_yaml("web-2")),
    )
    .unwrap();
    let fixed = load_dir(dir.path(), &broken.state);
    assert!(fixed.errors.is_empty(), "{:?}", rendered(&fixed.errors));
    assert_eq!(names(&fixed.model), ["svc:web", "pod:web-2"]);
    assert_eq!(port_of(&fixed.model, "web"), 8080);
}

#[test]
fn file_never_good_contributes_nothing_and_others_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), service_yaml("a", 80)).unwrap();
    fs::write(
        dir.path().join("b.yml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [\n",
    )
    .unwrap();
    let load = load_dir(dir.path(), &ManifestState::default());
    assert_eq!(names(&load.model), ["svc:a"]);
    assert_eq!(load.errors.len(), 1);
    assert!(matches!(load.errors[0], SourceError::Yaml { .. }));
    assert!(load.errors[0].to_string().starts_with(&format!(
        "{}: invalid YAML",
        dir.path().join("b.yml").display()
    )));
    assert_eq!(load.files, 2);
    assert_eq!(load.state.file_objects(&dir.path().join("b.yml")), None);
}

#[test]
fn deleted_file_removes_its_objects() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), service_yaml("a", 80)).unwrap();
    fs::write(dir.path().join("b.yaml"), service_yaml("b", 80)).unwrap();
    let load = load_dir(dir.path(), &ManifestState::default());
    assert_eq!(names(&load.model), ["svc:a", "svc:b"]);
    fs::remove_file(dir.path().join("b.yaml")).unwrap();
    let load = load_dir(dir.path(), &load.state);
    assert_eq!(names(&load.model), ["svc:a"]);
    assert_eq!(load.state.file_objects(&dir.path().join("b.yaml")), None);

    // Also when the file was broken at the time.
    fs::write(dir.path().join("a.yaml"), "{").unwrap();
    let broken = load_dir(dir.path(), &load.state);
    assert_eq!(names(&broken.model), ["svc:a"]);
    fs::remove_file(dir.path().join("a.yaml")).unwrap();
    let gone = load_dir(dir.path(), &broken.state);
    assert!(gone.errors.is_empty());
    assert_eq!(gone.model, ClusterModel::default());
    assert_eq!(gone.files, 0);
}

#[test]
fn object_in_two_files_stays_with_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.yaml"),
        dir.path().join("b.yaml"),
        dir.path().join("c.yaml"),
    );
    fs::write(
        &b,
        format!("{}---\n{}", service_yaml("web", 80), pod_yaml("b-pod")),
    )
    .unwrap();
    fs::write(
        &c,
        format!("{}---\n{}", service_yaml("web", 81), pod_yaml("c-pod")),
    )
    .unwrap();
    // Both new: the lexicographically first file wins; the rest of c.yaml is still taken.
    let load = load_dir(dir.path(), &ManifestState::default());
    assert_eq!(port_of(&load.model, "web"), 80);
    assert_eq!(names(&load.model), ["svc:web", "pod:b-pod", "pod:c-pod"]);
    assert_eq!(
        rendered(&load.errors),
        [format!(
            "{}: Service default/web: already defined in {}; ignoring this definition",
            c.display(),
            b.display()
        )]
    );

    // a.yaml sorts first but comes later: b.yaml keeps it.
    fs::write(&a, service_yaml("web", 82)).unwrap();
    let load = load_dir(dir.path(), &load.state);
    assert_eq!(port_of(&load.model, "web"), 80);
    let errors = rendered(&load.errors);
    assert!(errors.contains(&format!(
        "{}: Service default/web: already defined in {}; ignoring this definition",
        a.display(),
        b.display()
    )));
    assert_eq!(errors.len(), 2);

    // b.yaml drops it: the first of the others takes over.
    fs::write(&b, pod_yaml("b-pod")).unwrap();
    let load = load_dir(dir.path(), &load.state);
    assert_eq!(port_of(&load.model, "web"), 82);
    assert_eq!(load.errors.len(), 1);
}

#[test]
fn only_visible_yaml_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yml"), service_yaml("a", 80)).unwrap();
    fs::write(dir.path().join(".a.yaml.swp"), "garbage: [").unwrap();
    fs::write(dir.path().join(".hidden.yaml"), service_yaml("hidden", 80)).unwrap();
    fs::write(dir.path().join("notes.txt"), "garbage: [").unwrap();
    fs::write(dir.path().join("b.yaml~"), service_yaml("backup", 80)).unwrap();
    fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    fs::write(
        dir.path().join("sub.yaml").join("c.yaml"),
        service_yaml("nested", 80),
    )
    .unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.path().join("a.yml"), dir.path().join("link.yaml")).unwrap();
    let load = load_dir(dir.path(), &ManifestState::default());
    assert_eq!(names(&load.model), ["svc:a"]);
    #[cfg(unix)]
    {
        // The symlink is read too, so its Service is a duplicate of a.yml's.
        assert_eq!(load.files, 2);
        assert!(
            matches!(load.errors[..], [SourceError::Duplicate { .. }]),
            "{:?}",
            rendered(&load.errors)
        );
    }
}

#[test]
fn unreadable_directory_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), service_yaml("a", 80)).unwrap();
    let load = load_dir(dir.path(), &ManifestState::default());
    let missing = dir.path().join("missing");
    let again = load_dir(&missing, &load.state);
    assert_eq!(again.model, load.model);
    assert_eq!(again.state, load.state);
    assert!(matches!(again.errors[..], [SourceError::ReadDir { .. }]));
    assert!(again.errors[0]
        .to_string()
        .starts_with(&format!("{}: cannot list directory: ", missing.display())));
}
