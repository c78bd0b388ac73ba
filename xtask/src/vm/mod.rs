//! `cargo xtask vm-test --kernel 6.1|6.12|host`: the privileged tests on another kernel.
//!
//! The README promises older kernels than the one the machine runs, so the tests boot Debian's
//! own kernel packages under qemu. Design:
//! - Root filesystem: the host's `/` shared read-only over virtio-9p and used as the guest's root
//!   (tmpfs over /tmp and /run). The test executables, `meshpath`, `mp-testpod`, `ip` and every
//!   shared library are then the very files the host built and uses, at the same paths: nothing
//!   is copied, nothing can go stale, and the build stays the host's ordinary `cargo` build. An
//!   initramfs with everything would have to gather ~hundreds of MiB of debug binaries and their
//!   libraries on every run. The price is the generic (not `cloud`) Debian kernel, the one whose
//!   9p modules exist, and a tiny initramfs (static busybox + modules) that mounts the share.
//! - Results: the console streams to this terminal; the exit status of the tests comes back as a
//!   file in a per-run directory shared read-write, so a crashed or hung guest (no file) fails
//!   too, and a failing test fails `vm-test`.
//! - Acceleration: TCG by default. KVM nested in this machine's VM refuses guests, and there is
//!   no cheap reliable probe short of booting; `--accel kvm` is there for machines where it works.
//! - `--kernel host` runs the same test executables on the running kernel, for the matrix.

mod initramfs;
mod kernel;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::paths::{debug_bin, workspace_root};

#[derive(clap::Args)]
pub struct VmTestArgs {
    /// Kernel series of Debian's packages ("6.1", "6.12"), or "host" for the running kernel.
    #[arg(long)]
    pub kernel: String,
    /// Only the lean smoke set (tests/tests/kernel_smoke.rs) instead of every privileged test.
    #[arg(long)]
    pub smoke: bool,
    /// Only these test files of tests/tests (by name, e.g. `connect_lb`); repeatable.
    #[arg(long = "test", value_name = "NAME")]
    pub tests: Vec<String>,
    #[arg(long, value_enum, default_value_t = qemu::Accel::Tcg)]
    pub accel: qemu::Accel,
    /// Kill the VM after this long.
    #[arg(long, default_value_t = 1200)]
    pub timeout_secs: u64,
    #[arg(long, default_value_t = 2048)]
    pub memory_mib: u32,
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Run this shell command in the guest instead of the tests (for looking around: its exit
    /// status is the result).
    #[arg(long)]
    pub command: Option<String>,
    /// Arguments for every test executable, e.g. a test name filter.
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

impl VmTestArgs {
    /// The smoke set on `kernel` with the defaults of the command line.
    pub fn smoke(kernel: &str) -> VmTestArgs {
        VmTestArgs {
            kernel: kernel.to_string(),
            smoke: true,
            tests: Vec::new(),
            accel: qemu::Accel::Tcg,
            timeout_secs: 1200,
            memory_mib: 2048,
            cpus: 2,
            command: None,
            test_args: Vec::new(),
        }
    }
}

/// Whether a VM can be booted here at all, with the reason when not.
pub fn can_run() -> Result<(), String> {
    qemu::available()?;
    initramfs::busybox_available()
}

pub fn run(args: &VmTestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.kernel != "host" {
        // Fail before the build when the VM cannot run at all.
        can_run().map_err(anyhow::Error::msg)?;
    }
    let tests = build(args)?;
    if args.kernel == "host" {
        crate::test::require_root("the tests create network namespaces and cgroups")?;
        run_on_host(&tests, &args.test_args)?;
    } else {
        run_in_vm(args, &tests)?;
    }
    println!(
        "vm-test: kernel {} passed in {:.1?}",
        args.kernel,
        started.elapsed()
    );
    Ok(())
}

/// Builds the eBPF object, the binaries and the test executables; returns the executables.
fn build(args: &VmTestArgs) -> anyhow::Result<Vec<PathBuf>> {
    crate::build_ebpf::run()?;
    crate::test::cargo(&["build", "--workspace", "--bins"])?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args([
        "test",
        "-p",
        "meshpath-tests",
        "--no-run",
        "--message-format=json",
    ]);
    let mut targets = args.tests.clone();
    if args.smoke {
        targets.push("kernel_smoke".into());
    }
    if targets.is_empty() {
        cmd.arg("--tests");
    }
    for t in &targets {
        cmd.args(["--test", t]);
    }
    let out = cmd.output().context("cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "cargo test --no-run failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["profile"]["test"] == true {
            if let Some(exe) = msg["executable"].as_str() {
                exes.push(PathBuf::from(exe));
            }
        }
    }
    if exes.is_empty() {
        bail!("cargo test --no-run reported no test executables");
    }
    Ok(exes)
}

fn test_env() -> [(&'static str, PathBuf); 2] {
    [
        ("MESHPATH_BIN", debug_bin("meshpath")),
        ("MP_TESTPOD_BIN", debug_bin("mp-testpod")),
    ]
}

fn run_on_host(tests: &[PathBuf], test_args: &[String]) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for exe in tests {
        let status = Command::new(exe)
            .current_dir(workspace_root().join("tests"))
            .envs(test_env())
            .arg("--test-threads=1")
            .args(test_args)
            .status()
            .with_context(|| format!("running {}", exe.display()))?;
        if !status.success() {
            failed.push(exe.display().to_string());
        }
    }
    if !failed.is_empty() {
        bail!("failed on the host kernel: {}", failed.join(", "));
    }
    Ok(())
}

fn run_in_vm(args: &VmTestArgs, tests: &[PathBuf]) -> anyhow::Result<()> {
    let cache = workspace_root().join("target/vm");
    let prep = Instant::now();
    let kernel = kernel::ensure(&args.kernel, &cache)?;
    let initramfs = initramfs::ensure(&kernel)?;
    println!(
        "vm: {} {} (Linux {}) ready in {:.1?}; booting with {:?}",
        kernel.package,
        kernel.version,
        kernel.release,
        prep.elapsed(),
        args.accel
    );
    let run = RunDir::create(&cache)?;
    std::fs::write(
        run.path.join("guest.sh"),
        guest_script(&run.path, tests, &args.test_args, args.command.as_deref()),
    )?;
    let boot = Instant::now();
    qemu::Machine {
        kernel: &kernel,
        initramfs: &initramfs,
        out_dir: &run.path,
        accel: args.accel,
        memory_mib: args.memory_mib,
        cpus: args.cpus,
        timeout: Duration::from_secs(args.timeout_secs),
    }
    .run()?;
    let status = std::fs::read_to_string(run.path.join("status")).unwrap_or_default();
    println!("vm: guest ran for {:.1?}", boot.elapsed());
    match status.trim() {
        "0" => Ok(()),
        "" => {
            bail!("the guest powered off without reporting a test status (see its console above)")
        }
        code => bail!(
            "tests failed on Linux {} (guest status {code})",
            kernel.release
        ),
    }
}

/// The per-run shared directory, removed however the run ends (error, test failure, timeout).
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    fn create(cache: &Path) -> anyhow::Result<RunDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let path = cache.join(format!("run-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(RunDir { path })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs as the guest's PID 1 on the host's root: mounts what the tests expect, runs every test
/// executable, writes the status for the host and powers off.
fn guest_script(
    out: &Path,
    tests: &[PathBuf],
    test_args: &[String],
    command: Option<&str>,
) -> String {
    let out = quote(&out.display().to_string());
    let mut s = String::from("#!/bin/sh\n# Written by `cargo xtask vm-test` for one run.\n");
    s.push_str("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
    s.push_str("export HOME=/tmp\n");
    for (k, v) in test_env() {
        s.push_str(&format!("export {k}={}\n", quote(&v.display().to_string())));
    }
    s.push_str(&format!(
        "bb=/run/busybox\nfinish() {{ echo \"$1\" > {out}/status; sync; $bb poweroff -f; }}\n"
    ));
    s.push_str("$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup || finish 100\n");
    s.push_str("$bb mount -t bpf bpf /sys/fs/bpf || finish 101\n");
    s.push_str("ip link set lo up || finish 102\n");
    s.push_str("echo \"vm: guest Linux $(uname -r) up after $(cut -d' ' -f1 /proc/uptime) s\"\n");
    s.push_str(&format!(
        "cd {} || finish 103\nrc=0\n",
        quote(&workspace_root().join("tests").display().to_string())
    ));
    if let Some(command) = command {
        s.push_str(&format!("sh -c {} || rc=$?\nfinish $rc\n", quote(command)));
        return s;
    }
    let args: Vec<String> = test_args.iter().map(|a| quote(a)).collect();
    for exe in tests {
        s.push_str(&format!(
            "{} --test-threads=1 {} || rc=1\n",
            quote(&exe.display().to_string()),
            args.join(" ")
        ));
    }
    s.push_str("finish $rc\n");
    s
}
