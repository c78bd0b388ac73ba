//! `cargo xtask test`: every test, including the privileged ones that load real eBPF programs into
//! per-run cgroups and network namespaces.

use std::process::Command;

use anyhow::{bail, Context};

use crate::paths::{debug_bin, workspace_root};

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    require_root("the tests create network namespaces and cgroups and load eBPF programs")?;
    crate::build_ebpf::run()?;
    // The agent embeds the object at build time; the tests start the real binaries.
    cargo(&["build", "--workspace", "--bins"])?;
    let mut args = vec!["test".to_string(), "--workspace".to_string()];
    if !extra.is_empty() {
        args.push("--".into());
        args.extend(extra.iter().cloned());
    }
    let status = Command::new(cargo_bin())
        .current_dir(workspace_root())
        .args(&args)
        .env("MESHPATH_BIN", debug_bin("meshpath"))
        .env("MP_TESTPOD_BIN", debug_bin("mp-testpod"))
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(cargo_bin())
        .current_dir(workspace_root())
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The cargo that runs xtask (rustup's), not Debian's, for the host build.
fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub fn require_root(why: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: {why}");
    }
    Ok(())
}
