//! `cargo xtask test`: every test, including the privileged ones that load real eBPF programs into
//! per-run cgroups and network namespaces.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::paths::{debug_bin, workspace_root};

pub fn run(extra: &[String], no_vm: bool, no_fuzz: bool) -> anyhow::Result<()> {
    require_root("the tests create network namespaces and cgroups and load eBPF programs")?;
    crate::build_ebpf::run()?;
    // The agent embeds the object at build time; the tests start the real binaries.
    cargo(&["build", "--workspace", "--bins"])?;
    // --no-fail-fast: one run reports every failing test binary, not just the first.
    let mut args = vec![
        "test".to_string(),
        "--workspace".to_string(),
        "--no-fail-fast".to_string(),
    ];
    if !extra.is_empty() {
        args.push("--".into());
        args.extend(extra.iter().cloned());
    }
    let mut child = Command::new(cargo_bin())
        .current_dir(workspace_root())
        .args(&args)
        .env("MESHPATH_BIN", debug_bin("meshpath"))
        .env("MP_TESTPOD_BIN", debug_bin("mp-testpod"))
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Echo cargo test's output and add up its per-binary results, so the run ends with one total
    // line instead of the last binary's (often a doc-test binary with 0 tests).
    let mut total = Totals::default();
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        total.add(&line);
    }
    let status = child.wait()?;
    println!("{}", total.summary());
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    fuzz_bounded(extra, no_fuzz)?;
    vm_smoke(extra, no_vm)?;
    // Again at the very end, so the run's last line is its total, not the VM's own output.
    println!("{}", total.summary());
    Ok(())
}

/// Seconds each fuzz target runs in a full test run: four targets and the build stay within
/// about four minutes (longer runs: `bash scripts/fuzz.sh SECONDS`).
const FUZZ_SECONDS_PER_TARGET: u32 = 30;

/// The fuzz targets (scripts/fuzz.sh), briefly: only for full runs.
fn fuzz_bounded(extra: &[String], no_fuzz: bool) -> anyhow::Result<()> {
    let skip = if no_fuzz {
        Some("--no-fuzz was given")
    } else if !extra.is_empty() {
        Some("a test filter was given")
    } else {
        None
    };
    if let Some(why) = skip {
        println!("meshpath: bounded fuzz run skipped: {why}");
        return Ok(());
    }
    let started = std::time::Instant::now();
    let status = Command::new("bash")
        .arg(workspace_root().join("scripts/fuzz.sh"))
        .arg(FUZZ_SECONDS_PER_TARGET.to_string())
        .status()
        .context("running scripts/fuzz.sh")?;
    if !status.success() {
        bail!("fuzzing found a crash or failed to run ({status}); see fuzz/artifacts/");
    }
    println!(
        "meshpath: bounded fuzz run ({FUZZ_SECONDS_PER_TARGET} s per target) passed in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// The oldest kernel the README promises, in a VM: only for full runs, and only where qemu runs.
fn vm_smoke(extra: &[String], no_vm: bool) -> anyhow::Result<()> {
    let skip = if no_vm {
        Some("--no-vm was given".to_string())
    } else if !extra.is_empty() {
        Some("a test filter was given".to_string())
    } else {
        crate::vm::can_run().err()
    };
    if let Some(why) = skip {
        println!("meshpath: Linux 6.1 smoke run in a VM skipped: {why}");
        return Ok(());
    }
    let started = std::time::Instant::now();
    crate::vm::run(&crate::vm::VmTestArgs::smoke("6.1"))?;
    println!(
        "meshpath: Linux 6.1 smoke run in a VM passed in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Tests that printed a `SKIP <test>: <reason>` line: libtest counts them as passed.
    skipped: u64,
}

impl Totals {
    /// Adds one `test result: ok. 5 passed; 0 failed; 1 ignored; ...` line, or counts one
    /// `SKIP <test>: <reason>` line of a privileged test that could not run here.
    fn add(&mut self, line: &str) {
        if meshpath_tests::skipped_test(line).is_some() {
            self.skipped += 1;
            return;
        }
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().skip_while(|w| w.ends_with('.'));
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

impl Totals {
    /// The run's last line: a skipped test counts as skipped, not as passed.
    fn summary(&self) -> String {
        format!(
            "meshpath: {} passed, {} failed, {} skipped",
            self.passed.saturating_sub(self.skipped),
            self.failed,
            self.ignored + self.skipped
        )
    }
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_with_env(args, &[])
}

/// `cargo args` at the workspace root with `env` set for it (e.g. its own CARGO_TARGET_DIR and
/// RUSTFLAGS; cargo's encoded flags, which would win over RUSTFLAGS, are removed then).
pub fn cargo_with_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> anyhow::Result<()> {
    let mut cmd = Command::new(cargo_bin());
    cmd.current_dir(workspace_root()).args(args);
    if !env.is_empty() {
        cmd.env_remove("CARGO_ENCODED_RUSTFLAGS");
    }
    let status = cmd
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} with {env:?} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The cargo that runs xtask (rustup's), not Debian's, for the host build.
pub(crate) fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub fn require_root(why: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: {why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{cargo_with_env, Totals};

    #[test]
    fn cargo_runs_with_extra_env_and_reports_a_failure() {
        let flags = std::ffi::OsStr::new("-Cdebuginfo=0");
        cargo_with_env(&["--version"], &[("RUSTFLAGS", flags)]).unwrap();
        let err = cargo_with_env(&["no-such-subcommand-here"], &[("RUSTFLAGS", flags)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no-such-subcommand-here") && err.contains("RUSTFLAGS"),
            "{err}"
        );
    }

    #[test]
    fn totals_add_up_cargo_test_result_lines() {
        let mut t = Totals::default();
        t.add("test result: ok. 51 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.70s");
        t.add("test result: FAILED. 2 passed; 1 failed; 3 ignored; 0 measured; 0 filtered out; finished in 2.55s");
        t.add("running 3 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (53, 1, 3));
        assert_eq!(t.summary(), "meshpath: 53 passed, 1 failed, 3 skipped");
    }

    #[test]
    fn skip_lines_move_tests_from_passed_to_skipped() {
        let mut t = Totals::default();
        t.add("SKIP lb_policy::round_robin: not root (privileged test)");
        t.add("test kube_source::x ... SKIP kube_source::x: no Kubernetes binaries");
        t.add("test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        assert_eq!(t.summary(), "meshpath: 3 passed, 0 failed, 3 skipped");
    }
}
