//! `meshpath validate` against Istio's own validation, on the corpus of `tests/istio-conformance/`
//! (see its README): every object of `valid/` must be accepted, every object of `invalid/` rejected
//! with Istio's reason (the substring `invalid/EXPECTED.tsv` gives) in the output.
//!
//! Known disagreements are listed in `tests/istio-conformance/KNOWN_GAPS.txt`: they are reported
//! but do not fail the test, and a listed file that starts passing does fail it, so that the list
//! only shrinks. `MESHPATH_CONFORMANCE_WRITE_GAPS=1` rewrites the list from this run (to remove
//! what was fixed; review the diff, it must only lose lines).
//!
//! Needs no privileges: it runs the built `meshpath` binary (`MESHPATH_BIN`, else
//! `target/debug/meshpath`; `cargo build --bin meshpath` first).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("istio-conformance")
}

fn meshpath_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MESHPATH_BIN") {
        return PathBuf::from(p);
    }
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/meshpath");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --bin meshpath` first (or set MESHPATH_BIN)",
        bin.display()
    );
    bin
}

/// One corpus file and what Istio does with it.
struct Case {
    /// `valid/NAME.yaml` or `invalid/NAME.yaml`, as in KNOWN_GAPS.txt.
    name: String,
    path: PathBuf,
    /// `None`: Istio accepts it. `Some(reason)`: Istio rejects it, saying `reason`.
    rejected_for: Option<String>,
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

fn cases() -> Vec<Case> {
    let root = corpus();
    let mut cases: Vec<Case> = yaml_files(&root.join("valid"))
        .into_iter()
        .map(|path| Case {
            name: format!("valid/{}", file_name(&path)),
            path,
            rejected_for: None,
        })
        .collect();
    let expected = std::fs::read_to_string(root.join("invalid/EXPECTED.tsv"))
        .expect("reading invalid/EXPECTED.tsv");
    let mut listed = BTreeSet::new();
    for line in expected.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split('\t');
        let (Some(file), Some(reason)) = (fields.next(), fields.next()) else {
            panic!("EXPECTED.tsv: malformed line {line:?}");
        };
        let path = root.join("invalid").join(file);
        assert!(path.is_file(), "EXPECTED.tsv names a missing file {file}");
        assert!(!reason.is_empty(), "EXPECTED.tsv: no reason for {file}");
        listed.insert(file.to_owned());
        cases.push(Case {
            name: format!("invalid/{file}"),
            path,
            rejected_for: Some(reason.to_owned()),
        });
    }
    for path in yaml_files(&root.join("invalid")) {
        let name = file_name(&path);
        assert!(
            listed.contains(&name),
            "invalid/{name} has no line in EXPECTED.tsv"
        );
    }
    cases
}

fn known_gaps() -> BTreeSet<String> {
    let text = std::fs::read_to_string(corpus().join("KNOWN_GAPS.txt")).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// `None` when meshpath agrees with Istio, else what went wrong.
fn check(bin: &Path, case: &Case) -> Option<String> {
    let out = Command::new(bin)
        .arg("validate")
        .arg(&case.path)
        .env("MESHPATH_LOG", "error")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    match (&case.rejected_for, out.status.success()) {
        (None, true) => None,
        (None, false) => Some(format!("rejected: {first}")),
        (Some(_), true) => Some("accepted".to_owned()),
        (Some(reason), false) if stdout.contains(reason.as_str()) => None,
        (Some(reason), false) => Some(format!(
            "rejected without {reason:?}: {}",
            stdout.lines().collect::<Vec<_>>().join(" | ")
        )),
    }
}

#[test]
fn meshpath_validate_agrees_with_istio() {
    let bin = meshpath_bin();
    let cases = cases();
    let gaps = known_gaps();
    for gap in &gaps {
        assert!(
            cases.iter().any(|c| &c.name == gap),
            "KNOWN_GAPS.txt names {gap}, which is not in the corpus"
        );
    }

    let (mut valid, mut valid_ok, mut invalid, mut invalid_ok) = (0, 0, 0, 0);
    let mut invalid_rejected = 0;
    let mut failing = Vec::new();
    let mut unexpected = Vec::new();
    let mut fixed = Vec::new();
    for case in &cases {
        let problem = check(&bin, case);
        let passed = problem.is_none();
        if case.rejected_for.is_none() {
            valid += 1;
            valid_ok += usize::from(passed);
        } else {
            invalid += 1;
            invalid_ok += usize::from(passed);
            invalid_rejected += usize::from(problem.as_deref() != Some("accepted"));
        }
        match (problem, gaps.contains(&case.name)) {
            (None, true) => fixed.push(case.name.clone()),
            (None, false) => {}
            (Some(_), true) => failing.push(case.name.clone()),
            (Some(p), false) => {
                failing.push(case.name.clone());
                unexpected.push(format!("{}: {p}", case.name));
            }
        }
    }

    eprintln!("Istio conformance of `meshpath validate`:");
    eprintln!("  valid accepted:                {valid_ok}/{valid}");
    eprintln!("  invalid rejected with reason:  {invalid_ok}/{invalid}");
    eprintln!("  invalid rejected (any reason): {invalid_rejected}/{invalid}");
    eprintln!(
        "  known gaps (expected failures): {}",
        failing.len() - unexpected.len()
    );
    if std::env::var_os("MESHPATH_CONFORMANCE_WRITE_GAPS").is_some() {
        let text = failing.iter().map(|n| format!("{n}\n")).collect::<String>();
        std::fs::write(corpus().join("KNOWN_GAPS.txt"), text).expect("writing KNOWN_GAPS.txt");
        eprintln!("  KNOWN_GAPS.txt rewritten with {} entries", failing.len());
        return;
    }
    assert!(
        unexpected.is_empty(),
        "{} case(s) disagree with Istio and are not in KNOWN_GAPS.txt:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
    assert!(
        fixed.is_empty(),
        "{} case(s) of KNOWN_GAPS.txt now pass: remove them from the list:\n{}",
        fixed.len(),
        fixed.join("\n")
    );
}
