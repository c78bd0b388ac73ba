//! `meshpath validate FILE|DIR...`: the agent's checks on manifests without loading anything,
//! like `istioctl analyze`: parsing and per-object validation (the manifests source), compiling
//! the Services (`compile`), and compiling the Istio objects against them (`compile::l7`).
//!
//! Cross-object checks need the other objects, so pass everything that goes together (the
//! Services a VirtualService routes to, the DestinationRules defining its subsets).

use std::path::{Path, PathBuf};

use meshpath_compile::l7::{compile_l7, L7Compiled, L7Error};
use meshpath_compile::{compile, CompileOptions, Compiled};
use meshpath_source::manifests::{is_manifest_name, load_paths, ManifestState};
use meshpath_source::SourceError;

/// What was checked and every problem found, one line each:
/// `FILE[:LINE[:COLUMN]]: [OBJECT: FIELD: ]REASON`.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub objects: usize,
    pub problems: Vec<String>,
    /// What is accepted but likely not what was meant, one line each (same form).
    pub warnings: Vec<String>,
}

pub fn validate(args: &[PathBuf]) -> Report {
    let mut report = Report::default();
    let mut files = Vec::new();
    for arg in args {
        match manifest_files(arg) {
            Ok(found) => files.extend(found),
            Err(source) => report.problems.push(format!("{}: {source}", arg.display())),
        }
    }
    let load = load_paths(files, &ManifestState::default());
    report.files = load.files;
    let model = load.model;
    report.objects = model.services.len()
        + model.endpoint_slices.len()
        + model.pods.len()
        + model.virtual_services.len()
        + model.destination_rules.len();
    report.problems.extend(load.errors.iter().map(source_line));

    let (compiled, errors) = compile(&model, &CompileOptions::default(), &Compiled::default());
    report
        .problems
        .extend(errors.iter().map(ToString::to_string));
    let (_, errors) = compile_l7(&model, &compiled, &L7Compiled::default());
    for error in errors {
        // Istio accepts a route to a subset no DestinationRule defines yet (it may be applied
        // next); the agent keeps the previous routes meanwhile.
        if matches!(error, L7Error::UnknownSubset { .. }) {
            report.warnings.push(error.to_string());
        } else {
            report.problems.push(error.to_string());
        }
    }
    report
}

/// A directory's manifests (as the agent reads them: `*.yaml`/`*.yml`, not hidden, not
/// recursive, sorted), or a file itself whatever its name.
fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !std::fs::metadata(path)?.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let file = entry?.path();
        if is_manifest_name(&file) && std::fs::metadata(&file).is_ok_and(|m| m.is_file()) {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// `FILE:LINE: rest`, the file moved out of the message so that editors can jump to the line.
fn source_line(error: &SourceError) -> String {
    let text = error.to_string();
    let Some(file) = error.file().map(|f| f.display().to_string()) else {
        return text;
    };
    let rest = text.strip_prefix(&format!("{file}: ")).unwrap_or(&text);
    match (error.line(), error.column()) {
        (Some(line), Some(column)) => format!("{file}:{line}:{column}: {rest}"),
        (Some(line), None) => format!("{file}:{line}: {rest}"),
        _ => format!("{file}: {rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: reviews\nspec:\n  \
                           clusterIP: 10.96.0.20\n  ports:\n  - port: 9080\n    name: http\n";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn valid_directory_has_no_problems() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "svc.yaml", SERVICE);
        write(
            dir.path(),
            "vs.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n\
             spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n",
        );
        write(dir.path(), "notes.txt", "not a manifest");
        let report = validate(&[dir.path().to_owned()]);
        assert_eq!(report.problems, Vec::<String>::new());
        assert_eq!((report.files, report.objects), (2, 2));
    }

    #[test]
    fn problems_name_file_line_object_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let svc = write(dir.path(), "svc.yaml", SERVICE);
        let routes = write(
            dir.path(),
            "routes.yaml",
            "# routes\napiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: reviews\n\
             spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n        \
             subset: v9\n",
        );
        // One bad object makes its whole file invalid, so it goes in a file of its own.
        let bad = write(
            dir.path(),
            "bad.yaml",
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: bad\nspec:\n  \
             hosts: [reviews]\n---\napiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  \
             name: bad2\nspec:\n  hosts: [reviews]\n  http:\n  - timeout: 7 seconds\n    route:\n    - \
             destination:\n        host: reviews\n",
        );
        let missing = dir.path().join("missing.yaml");
        let report = validate(&[svc, routes.clone(), bad.clone(), missing.clone()]);
        let (routes, bad) = (routes.display(), bad.display());
        assert_eq!(
            report.warnings,
            [format!(
                "{routes}:2: VirtualService default/reviews: spec.http[0].route[0].destination.subset: subset \"v9\" \
                 of Service default/reviews is not defined (no DestinationRule has host reviews); the \
                 VirtualService keeps its previous routes"
            )]
        );
        assert_eq!(
            report.problems,
            [
                format!("{}: No such file or directory (os error 2)", missing.display()),
                // Istio's problems point at their field (line and column), the others at the document.
                format!("{bad}:5:1: VirtualService default/bad: spec: http, tcp or tls must be provided in virtual service"),
                format!(
                    "{bad}:15:5: VirtualService default/bad2: spec.http[0].timeout: \"7 seconds\" is not a duration \
                     (write e.g. 7s, 0.5s, 100ms, 5m, 1h): unknown unit (use ns, us, ms, s, m or h)"
                ),
            ]
        );
    }
}
