//! `deploy/` applies cleanly to a real kube-apiserver: `kubectl apply --dry-run=server -f deploy/`
//! runs every object through the apiserver's decoding, defaulting, validation and admission
//! without persisting it.
//!
//! Server-side dry-run of a custom resource needs its CRD to exist and be Established, and of a
//! namespaced object needs its Namespace to exist, so the CustomResourceDefinition and Namespace
//! documents of deploy/ are applied for real first. `MESHPATH_DEPLOY_DIR` points the test at
//! another directory (used to check the test itself).

use std::path::PathBuf;
use std::time::Duration;

use meshpath_tests::KubeCluster;
use meshpath_tests::{skip_unless, KUBE};

fn deploy_dir() -> PathBuf {
    std::env::var_os("MESHPATH_DEPLOY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy"))
}

/// The files `kubectl apply -f <dir>` reads: the directory's own *.yaml, *.yml and *.json.
fn manifest_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| ["yaml", "yml", "json"].contains(&e))
        })
        .collect();
    files.sort();
    files
}

/// Top-level `kind:` of a YAML document, if it has one.
fn kind(doc: &str) -> Option<&str> {
    doc.lines()
        .find_map(|l| l.strip_prefix("kind:"))
        .map(|k| k.trim().trim_matches(|c| c == '"' || c == '\''))
}

/// The documents of all YAML files whose kind is one of `kinds`, as one multi-document stream.
fn documents_of_kind(files: &[PathBuf], kinds: &[&str]) -> String {
    let mut out = String::new();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e != "json"))
    {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let mut doc = String::new();
        for line in text.lines().chain(["---"]) {
            if line.trim_end() == "---" || line.starts_with("--- ") {
                if kind(&doc).is_some_and(|k| kinds.contains(&k)) {
                    out.push_str("---\n");
                    out.push_str(&doc);
                }
                doc.clear();
            } else {
                doc.push_str(line);
                doc.push('\n');
            }
        }
    }
    out
}

#[test]
fn deploy_dir_applies_to_a_real_apiserver() {
    skip_unless!(KUBE);
    let dir = deploy_dir();
    assert!(
        dir.is_dir(),
        "{} does not exist: the manifests users apply (`kubectl apply -f deploy/`) belong there",
        dir.display()
    );
    let files = manifest_files(&dir);
    assert!(
        !files.is_empty(),
        "no *.yaml/*.yml/*.json in {}",
        dir.display()
    );
    let kube = KubeCluster::start().expect("start the test cluster");

    let prereqs = documents_of_kind(&files, &["Namespace", "CustomResourceDefinition"]);
    if !prereqs.is_empty() {
        let out = kube
            .kubectl_stdin(["apply", "-o", "name", "-f", "-"], &prereqs)
            .expect("run kubectl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "applying the Namespaces and CRDs of {} failed:\n{}{stdout}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let crds: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with("customresourcedefinition"))
            .collect();
        if !crds.is_empty() {
            let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
            args.extend(&crds);
            kube.kubectl_ok(&args).expect("the CRDs become Established");
        }
        eprintln!("applied for real: {}", stdout.trim().replace('\n', ", "));
    }

    let dir_arg = dir.to_string_lossy().into_owned();
    // Discovery is cached per kubectl cache dir; the CRDs just added must be seen.
    kube.poll_until("the new kinds are served", Duration::from_secs(30), || {
        let out = kube.kubectl(["apply", "--dry-run=server", "-f", &dir_arg])?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() && stderr.contains("ensure CRDs are installed first") {
            return Ok(None);
        }
        assert!(
            out.status.success(),
            "`kubectl apply --dry-run=server -f {dir_arg}` failed:\n{stderr}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{stdout}{stderr}");
        let applied = stdout
            .lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count();
        assert!(applied > 0, "nothing was applied:\n{stdout}");
        Ok(Some(()))
    })
    .expect("server-side dry run");
}
