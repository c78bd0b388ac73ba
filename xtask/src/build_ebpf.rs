//! Builds ebpf/meshpath-ebpf for bpfel-unknown-none with Debian's rustc (which ships a prebuilt
//! `core` for that target; rustup here has no rust-src) and bpf-linker built against LLVM 22.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::paths::{bpf_object, workspace_root};

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const TARGET: &str = "bpfel-unknown-none";
/// BTF so aya can load BTF-described maps; cpu v3 for atomic fetch-add and 32-bit jumps.
const BPF_RUSTFLAGS: &str = "-C debuginfo=2 -C link-arg=--btf -C target-cpu=v3";

pub fn run() -> anyhow::Result<()> {
    for (path, what) in [
        (DEBIAN_RUSTC, "Debian's rustc (package rustc-web)"),
        (DEBIAN_CARGO, "Debian's cargo (package cargo-web)"),
        (
            BPF_CORE_DIR,
            "the prebuilt BPF core (package libstd-rust-web-dev-bpf)",
        ),
        (LLVM_BIN, "LLVM 22 (package llvm-22-dev)"),
    ] {
        if !Path::new(path).exists() {
            bail!("{what} is missing at {path}: run `sudo bash scripts/setup.sh` first");
        }
    }
    let crate_dir = workspace_root().join("ebpf/meshpath-ebpf");
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    if !on_path(&path, "bpf-linker") {
        bail!("bpf-linker is not on PATH: run `sudo bash scripts/setup.sh` first");
    }

    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.current_dir(&crate_dir)
        .args(["build", "--release", "--target", TARGET])
        .env("PATH", &path)
        .env("RUSTC", DEBIAN_RUSTC)
        // Debian's rustc is a stable compiler; the BPF crate needs one unstable feature
        // (core_intrinsics, for an atomic fetch-add the BPF `core` has no safe API for).
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", BPF_RUSTFLAGS);
    // The outer `cargo xtask` exports variables meant for the host build; keep them out.
    for (key, _) in std::env::vars() {
        let host_only = key.starts_with("CARGO_") && key != "CARGO_HOME";
        if host_only || matches!(key.as_str(), "RUSTUP_TOOLCHAIN" | "RUSTC_WRAPPER" | "CARGO") {
            cmd.env_remove(&key);
        }
    }
    let status = cmd
        .status()
        .with_context(|| format!("running {DEBIAN_CARGO}"))?;
    if !status.success() {
        bail!("building the eBPF crate failed ({status})");
    }

    let built = crate_dir
        .join("target")
        .join(TARGET)
        .join("release/meshpath-ebpf");
    let out = bpf_object();
    std::fs::create_dir_all(out.parent().expect("object path has a parent"))?;
    strip_debug(&built, &out)?;
    eprintln!("xtask: eBPF object at {}", out.display());
    Ok(())
}

/// Copies the object without its DWARF sections. bpf-linker needs debug info to emit BTF, but
/// nothing loads the DWARF: maps and programs are described by `.BTF`/`.BTF.ext` (which keep the
/// verifier's line info), and those stay. The DWARF and its relocations are about 85 % of the
/// object's bytes, which the agent embeds and aya reads at start-up, so they would sit in the
/// agent's resident memory. The unstripped object stays in the crate's target directory for
/// `llvm-objdump -S`.
fn strip_debug(built: &Path, out: &Path) -> anyhow::Result<()> {
    let strip = Path::new(LLVM_BIN).join("llvm-strip");
    let status = Command::new(&strip)
        .arg("--strip-debug")
        .arg("-o")
        .arg(out)
        .arg(built)
        .status()
        .with_context(|| format!("running {}", strip.display()))?;
    if !status.success() {
        bail!(
            "{} --strip-debug -o {} {} failed ({status})",
            strip.display(),
            out.display(),
            built.display()
        );
    }
    Ok(())
}

fn on_path(path: &str, program: &str) -> bool {
    std::env::split_paths(path).any(|dir| dir.join(program).is_file())
}
