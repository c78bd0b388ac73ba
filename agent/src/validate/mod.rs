//! `meshpath validate FILE|DIR...`: the agent's checks on manifests without loading anything,
//! like `istioctl analyze`: parsing and per-object validation (the manifests source), compiling
//! the Services (`compile`), and compiling the Istio objects against them (`compile::l7`).
//!
//! Cross-object checks need the other objects, so pass everything that goes together (the
//! Services a VirtualService routes to, the DestinationRules defining its subsets).

mod diagnostic;

use std::path::{Path, PathBuf};

use meshpath_compile::l7::{compile_l7, L7Compiled};
use meshpath_compile::{compile, CompileOptions, Compiled};
use meshpath_source::manifests::{is_manifest_name, load_paths, ManifestState};

pub use diagnostic::{Diagnostic, Severity};

/// What was checked and every problem found, in the order found: files that cannot be read,
/// then each file's problems and notices, then what compiling the objects together found.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub objects: usize,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }

    /// One line per problem (`FILE:LINE:COL: Severity [CODE] MESSAGE`).
    pub fn to_text(&self) -> String {
        self.diagnostics
            .iter()
            .map(|d| d.to_line() + "\n")
            .collect()
    }

    /// A JSON array of the problems, as `istioctl analyze -o json` prints them.
    pub fn to_json(&self) -> String {
        let all: Vec<_> = self.diagnostics.iter().map(Diagnostic::to_json).collect();
        serde_json::to_string_pretty(&all).unwrap_or_default() + "\n"
    }
}

pub fn validate(args: &[PathBuf]) -> Report {
    let mut report = Report::default();
    let mut files = Vec::new();
    for arg in args {
        match manifest_files(arg) {
            Ok(found) => files.extend(found),
            Err(source) => report
                .diagnostics
                .push(Diagnostic::io(arg.clone(), &source)),
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
    // Per file, its errors then its notices, in the order of the file.
    let mut per_file: Vec<Diagnostic> = load.errors.iter().map(Diagnostic::from_source).collect();
    per_file.extend(load.notices.iter().map(Diagnostic::from_notice));
    per_file.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    report.diagnostics.extend(per_file);

    let (compiled, errors) = compile(&model, &CompileOptions::default(), &Compiled::default());
    report
        .diagnostics
        .extend(errors.iter().map(Diagnostic::from_compile));
    let (_, errors) = compile_l7(&model, &compiled, &L7Compiled::default());
    report.diagnostics.extend(
        errors
            .iter()
            .map(|e| Diagnostic::from_l7(e, |file| std::fs::read_to_string(file).ok())),
    );
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
        assert_eq!(report.to_text(), "");
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
            report.to_text().lines().collect::<Vec<_>>(),
            [
                format!("{}: Error No such file or directory (os error 2)", missing.display()),
                // Every problem points at its field: line and column.
                format!("{bad}:5:1: Error [IST0106] VirtualService default/bad: spec: http, tcp or tls must be provided in virtual service"),
                format!(
                    "{bad}:15:5: Error [IST0106] VirtualService default/bad2: spec.http[0].timeout: \"7 seconds\" is not a \
                     duration (write e.g. 7s, 0.5s, 100ms, 5m, 1h): unknown unit (use ns, us, ms, s, m or h)"
                ),
                format!(
                    "{routes}:12:9: Warning [IST0101] VirtualService default/reviews: spec.http[0].route[0].destination.subset: \
                     subset \"v9\" of Service default/reviews is not defined (no DestinationRule has host reviews); \
                     requests routed to it get 503 (no cluster) until a DestinationRule defines it"
                ),
            ]
        );
        assert_eq!(
            (
                report.count(Severity::Error),
                report.count(Severity::Warning)
            ),
            (3, 1)
        );
    }

    #[test]
    fn accepted_but_not_enforced_fields_are_warnings_at_their_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let svc = write(dir.path(), "svc.yaml", SERVICE);
        let dr = write(
            dir.path(),
            "dr.yaml",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n\
             spec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n    connectionPool:\n      \
             tcp:\n        tcpKeepalive: {time: 7200s}\n",
        );
        let report = validate(&[svc, dr.clone()]);
        let dr = dr.display();
        assert_eq!(
            report.to_text().lines().collect::<Vec<_>>(),
            [
                format!("{dr}:8:5: Warning DestinationRule default/reviews: spec.trafficPolicy.tls: accepted, not enforced by meshpath"),
                format!(
                    "{dr}:11:9: Warning DestinationRule default/reviews: spec.trafficPolicy.connectionPool.tcp.tcpKeepalive: accepted, not enforced by meshpath"
                ),
            ]
        );
        assert_eq!(report.count(Severity::Error), 0);

        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
        assert_eq!(json.as_array().map(Vec::len), Some(2));
        assert_eq!(json[1]["level"], "Warning");
        assert_eq!(json[1]["origin"], "DestinationRule default/reviews");
        assert_eq!(
            json[1]["field"],
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive"
        );
        assert_eq!(
            (json[1]["line"].as_u64(), json[1]["column"].as_u64()),
            (Some(11), Some(9))
        );
        assert_eq!(json[1]["reference"], format!("{dr}:11"));
    }
}
