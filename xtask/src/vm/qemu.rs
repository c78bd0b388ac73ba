//! Boots the guest under qemu with the host's root shared read-only and a per-run directory
//! shared read-write, streams its serial console, and enforces the timeout.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::kernel::Kernel;

pub const QEMU: &str = "qemu-system-x86_64";

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Accel {
    /// Software emulation: slow but works everywhere, including nested in VMs whose KVM refuses
    /// guests (seen here: "failed to set MSR 0x10a" with `-cpu host`).
    Tcg,
    /// Hardware virtualisation through /dev/kvm with `-cpu host`.
    Kvm,
}

pub struct Machine<'a> {
    pub kernel: &'a Kernel,
    pub initramfs: &'a Path,
    /// Shared read-write as tag `out`; the guest script and its status file live here.
    pub out_dir: &'a Path,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Duration,
}

/// Whether qemu is installed, with the reason when not.
pub fn available() -> Result<(), String> {
    match Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`{QEMU} --version` failed ({s})")),
        Err(_) => Err(format!(
            "{QEMU} is not installed (Debian package qemu-system-x86; scripts/setup.sh installs it)"
        )),
    }
}

impl Machine<'_> {
    /// Boots, echoes the console, and returns once the guest powered off (or fails on timeout).
    pub fn run(&self) -> anyhow::Result<()> {
        available().map_err(anyhow::Error::msg)?;
        let out = self.out_dir.display().to_string();
        if out.contains([' ', ',']) {
            bail!("the VM's shared directory path must not contain spaces or commas: {out}");
        }
        let mut cmd = Command::new(QEMU);
        cmd.args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .args(["-m", &self.memory_mib.to_string()])
        .args(["-smp", &self.cpus.to_string()]);
        match self.accel {
            // One host thread for all vCPUs: with multi-threaded TCG Debian's 6.12 oopsed at
            // boot (int3 in sched_clock_cpu while the kernel patched its own text), and the
            // machines this runs on have few cores to spare anyway.
            Accel::Tcg => cmd.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        };
        cmd.arg("-kernel")
            .arg(&self.kernel.vmlinuz)
            .arg("-initrd")
            .arg(self.initramfs)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off mp.out={out}"
            ))
            .args([
                "-fsdev",
                "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device",
                "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
                "-fsdev",
                &format!("local,id=out,path={out},security_model=none"),
                "-device",
                "virtio-9p-pci,fsdev=out,mount_tag=out",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {QEMU}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let echo = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("{}", line.trim_end_matches('\r'));
            }
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                // Our own child, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                let _ = echo.join();
                bail!(
                    "the VM did not finish within {:?} (raise --timeout-secs?)",
                    self.timeout
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = echo.join();
        if !status.success() {
            bail!("{QEMU} failed ({status})");
        }
        Ok(())
    }
}
