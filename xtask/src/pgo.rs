//! `cargo xtask pgo`: the agent built with profile-guided optimisation. An instrumented build
//! runs the L7 benchmark's proxy scenario (the proxy under fortio load at c = 1 to 64, and a
//! VirtualService rewritten under load), its counts are merged, and the agent is built again
//! with them. LLVM then lays out the code the training ran apart from the code it never ran and
//! optimises the cold part for size: fewer of the binary's pages are touched, so less of it is
//! resident (README, "The L7 hop").
//!
//! A profile belongs to one source tree and one compiler: functions whose code changed since the
//! training get no profile, and a profile from another rustc matches nothing. That is why it is
//! made here, with the compiler that builds the result, not committed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bench;
use crate::paths::workspace_root;
use crate::test::{cargo, cargo_with_env, require_root};

#[derive(Debug, clap::Args)]
pub struct PgoArgs {
    /// Length of each fortio run of the training (the L7 proxy scenario, one repeat).
    #[arg(long, default_value = "3s", value_parser = bench::parse_duration)]
    pub duration: Duration,
}

/// Where the builds, the raw counts and the merged profile go (below the workspace root).
const PGO_DIR: &str = "target/pgo";

pub fn run(args: PgoArgs) -> Result<()> {
    require_root("the training run is the L7 benchmark, which creates network namespaces and loads eBPF programs")?;
    let llvm_major = rustc_llvm_major()?;
    let profdata = find_profdata(llvm_major)?;
    let dir = workspace_root().join(PGO_DIR);
    let raw = dir.join("raw");
    let profile = dir.join("meshpath.profdata");

    crate::build_ebpf::run()?;
    // The benchmark's test pods are not trained: they come from the ordinary release build.
    cargo(&["build", "--release", "-p", "meshpath-tests", "--bins"])?;
    build_agent(
        &dir.join("gen"),
        &format!("-Cprofile-generate={}", raw.display()),
    )?;

    // Counts from the build scripts the instrumented build ran are not the agent's.
    recreate(&raw)?;
    let instrumented = dir.join("gen/release/meshpath");
    // Read by the instrumented agent's profiling runtime when it exits; `%p` keeps the runs of
    // every process (the agent, `meshpath status`) apart. Set before any thread exists.
    std::env::set_var("LLVM_PROFILE_FILE", raw.join("meshpath-%p-%m.profraw"));
    bench::run(bench::BenchArgs::training(
        instrumented,
        args.duration,
        dir.join("training"),
    ))
    .context("the training run (the L7 benchmark with the instrumented agent)")?;
    std::env::remove_var("LLVM_PROFILE_FILE");

    let raws = profraw_files(&raw)?;
    if raws.is_empty() {
        bail!(
            "the training left no counts in {}: did the agent exit cleanly?",
            raw.display()
        );
    }
    let status = Command::new(&profdata)
        .arg("merge")
        // Functions the training never ran are left out rather than recorded at zero: with no
        // profile LLVM optimises them as usual, where a zero count would compile them as cold
        // (for size), and the features the training does not exercise would pay for it.
        .arg("--sparse")
        .arg("-o")
        .arg(&profile)
        .args(&raws)
        .status()
        .with_context(|| format!("running {}", profdata.display()))?;
    if !status.success() {
        bail!("{} merge failed ({status})", profdata.display());
    }
    // A second run with a new profile rebuilt only the agent crate here, not its dependencies:
    // a fresh target directory keeps any crate from being built with the previous profile.
    let use_dir = dir.join("use");
    recreate(&use_dir)?;
    build_agent(&use_dir, &format!("-Cprofile-use={}", profile.display()))?;
    println!(
        "xtask: profile-guided agent at {}/use/release/meshpath (profile {} from {} processes); \
         benchmark it with `cargo xtask bench --agent {PGO_DIR}/use/release/meshpath`",
        dir.display(),
        profile.display(),
        raws.len()
    );
    Ok(())
}

/// `cargo build --release -p meshpath` into its own target directory with `rustflags`: the two
/// builds must not share (or thrash) the ordinary release build's artefacts.
fn build_agent(target_dir: &Path, rustflags: &str) -> Result<()> {
    cargo_with_env(
        &["build", "--release", "--locked", "-p", "meshpath"],
        &[
            ("CARGO_TARGET_DIR", target_dir.as_os_str()),
            ("RUSTFLAGS", rustflags.as_ref()),
        ],
    )
}

fn recreate(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn profraw_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "profraw") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The LLVM major version of the rustc that builds the agent: the profile format is LLVM's, and
/// llvm-profdata must be of the same major version.
fn rustc_llvm_major() -> Result<u32> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .with_context(|| format!("running {rustc} -vV"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    llvm_major(&text).with_context(|| format!("no \"LLVM version\" line in `{rustc} -vV`: {text}"))
}

/// The major version from `rustc -vV`'s "LLVM version: 22.1.2" or llvm-profdata's
/// "Debian LLVM version 22.1.8".
fn llvm_major(version_text: &str) -> Option<u32> {
    const TAG: &str = "LLVM version";
    let line = version_text.lines().find(|l| l.contains(TAG))?;
    let after = &line[line.find(TAG)? + TAG.len()..];
    after
        .trim_start_matches(':')
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// llvm-profdata of `major`: `llvm-profdata-<major>` on PATH, else Debian's
/// `/usr/lib/llvm-<major>/bin` (scripts/setup.sh installs LLVM 22 for bpf-linker).
fn find_profdata(major: u32) -> Result<PathBuf> {
    let debian = PathBuf::from(format!("/usr/lib/llvm-{major}/bin/llvm-profdata"));
    let candidates = [PathBuf::from(format!("llvm-profdata-{major}")), debian];
    for c in &candidates {
        let Ok(out) = Command::new(c).arg("--version").output() else {
            continue;
        };
        if out.status.success() && llvm_major(&String::from_utf8_lossy(&out.stdout)) == Some(major)
        {
            return Ok(c.clone());
        }
    }
    bail!(
        "no llvm-profdata of LLVM {major} (rustc's): tried {} and {}; install Debian's llvm-{major}",
        candidates[0].display(),
        candidates[1].display()
    )
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn reads_the_llvm_major_of_rustc_and_llvm_profdata() {
        let rustc = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\nLLVM version: 22.1.2\n";
        assert_eq!(llvm_major(rustc), Some(22));
        assert_eq!(
            llvm_major("Debian LLVM version 22.1.8\n  Optimized build.\n"),
            Some(22)
        );
        assert_eq!(
            llvm_major("LLVM (http://llvm.org/):\n  LLVM version 21.1.0\n"),
            Some(21)
        );
        assert_eq!(llvm_major("rustc 1.95.0\n"), None);
    }
}
