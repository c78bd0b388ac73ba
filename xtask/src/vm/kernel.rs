//! Debian kernel packages for the VM: resolved with apt-cache, fetched with `apt-get download`,
//! unpacked with `dpkg-deb -x` into `target/vm/kernels/<package>_<version>/`. A directory with a
//! `complete` stamp is reused as is, so a second run for the same package version downloads
//! nothing; a newer Debian package (after `apt-get update`) gets its own directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// One unpacked kernel package.
pub struct Kernel {
    pub package: String,
    pub version: String,
    /// The unpacked package tree (boot/, lib/modules/ or usr/lib/modules/).
    pub root: PathBuf,
    pub vmlinuz: PathBuf,
    /// `uname -r` of the kernel, the name of its modules directory.
    pub release: String,
}

impl Kernel {
    pub fn modules_dir(&self) -> PathBuf {
        modules_base(&self.root).join(&self.release)
    }

    /// The cache directory of this package version (the initramfs is cached next to it).
    pub fn cache_dir(&self) -> &Path {
        self.root.parent().expect("root has a parent")
    }
}

const STAMP: &str = "complete";

/// The unpacked kernel for `series` ("6.1", "6.12"), downloading it only when no complete copy of
/// the current Debian candidate is cached.
pub fn ensure(series: &str, cache: &Path) -> anyhow::Result<Kernel> {
    let kernels = cache.join("kernels");
    std::fs::create_dir_all(&kernels).with_context(|| format!("creating {}", kernels.display()))?;
    let (package, version) = match resolve(series) {
        Ok(pv) => pv,
        Err(e) => {
            // Offline or no apt lists: a cached copy of this series is still good enough.
            if let Some(k) = newest_cached(series, &kernels)? {
                println!(
                    "vm: cannot resolve the Debian {series} kernel ({e:#}); using cached {} {}",
                    k.package, k.version
                );
                return Ok(k);
            }
            return Err(e);
        }
    };
    let dir = kernels.join(format!("{package}_{version}"));
    if dir.join(STAMP).exists() {
        return open(&dir, &package, &version);
    }
    println!(
        "vm: downloading {package} {version} (once; cached in {})",
        dir.display()
    );
    let partial = kernels.join(format!("{package}_{version}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial)?;
    run(Command::new("apt-get")
        .arg("download")
        .arg(format!("{package}={version}"))
        .current_dir(&partial))
    .context("apt-get download (run `apt-get update` if the package list is stale)")?;
    let deb = std::fs::read_dir(&partial)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", partial.display()))?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(partial.join("root")))?;
    std::fs::remove_file(&deb)?;
    std::fs::write(partial.join(STAMP), format!("{package} {version}\n"))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&partial, &dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    open(&dir, &package, &version)
}

/// The versioned image package of a series and its candidate version, through the meta packages
/// Debian ships: `linux-image-6.12-amd64` on bookworm (its 6.12 backport), `linux-image-amd64`
/// for the distribution's own series. The generic flavour, not `cloud`: only it has 9p modules.
fn resolve(series: &str) -> anyhow::Result<(String, String)> {
    let want = format!("linux-image-{series}.");
    for meta in [
        format!("linux-image-{series}-amd64"),
        "linux-image-amd64".to_string(),
    ] {
        let Ok(out) = output(Command::new("apt-cache").args(["depends", "--important", &meta]))
        else {
            continue;
        };
        let dep = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|d| d.starts_with(&want) && d.ends_with("-amd64"));
        if let Some(pkg) = dep {
            let show = output(Command::new("apt-cache").args(["show", "--no-all-versions", pkg]))?;
            let version = show
                .lines()
                .find_map(|l| l.strip_prefix("Version: "))
                .with_context(|| format!("apt-cache show {pkg}: no Version"))?;
            return Ok((pkg.to_string(), version.trim().to_string()));
        }
    }
    bail!(
        "no Debian package for Linux {series} (tried linux-image-{series}-amd64 and \
         linux-image-amd64); run `apt-get update` or check the apt sources"
    )
}

fn newest_cached(series: &str, kernels: &Path) -> anyhow::Result<Option<Kernel>> {
    let prefix = format!("linux-image-{series}.");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(kernels)?.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && e.path().join(STAMP).exists() {
            found.push((e.metadata()?.modified()?, e.path()));
        }
    }
    found.sort();
    let Some((_, dir)) = found.pop() else {
        return Ok(None);
    };
    let stamp = std::fs::read_to_string(dir.join(STAMP))?;
    let mut it = stamp.split_whitespace();
    let (Some(p), Some(v)) = (it.next(), it.next()) else {
        bail!("malformed stamp in {}", dir.display());
    };
    open(&dir, p, v).map(Some)
}

fn open(dir: &Path, package: &str, version: &str) -> anyhow::Result<Kernel> {
    let root = dir.join("root");
    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}", boot.display()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .expect("checked above")
        .to_string();
    Ok(Kernel {
        package: package.to_string(),
        version: version.to_string(),
        root,
        vmlinuz,
        release,
    })
}

/// Debian packages put modules in lib/modules (bookworm) or usr/lib/modules (merged /usr).
fn modules_base(root: &Path) -> PathBuf {
    let usr = root.join("usr/lib/modules");
    if usr.is_dir() {
        usr
    } else {
        root.join("lib/modules")
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    output(cmd).map(|_| ())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
