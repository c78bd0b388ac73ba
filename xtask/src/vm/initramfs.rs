//! The guest's initramfs: static busybox, the kernel modules the guest needs before it can mount
//! the host's root over 9p (and veth/bridge, which nothing could auto-load later: the host root
//! has no modules for the guest kernel and no modprobe), and an /init that mounts the shares and
//! switches root. Written as a newc cpio by hand (a few lines) so no `cpio` tool or root-only
//! `mknod` is needed for /dev/console. Cached next to the kernel; the stamp holds everything the
//! image is made of, so a changed init script, module list or busybox rebuilds it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::kernel::Kernel;

const BUSYBOX: &str = "/bin/busybox";
/// Loaded in this order after their dependencies; built-in ones (virtio_pci on 6.12) are skipped.
const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "veth", "bridge"];

/// /init. `mp.out=<dir>` on the kernel command line names the host directory that is shared
/// read-write (tag `out`) and holds the guest script; the host's root is shared read-only (tag
/// `hostroot`) and becomes the guest's root, with tmpfs over the directories tests write to.
const INIT: &str = r#"#!/bin/busybox sh
export PATH=/bin
bb=/bin/busybox
die() { echo "vm-init: $*"; $bb poweroff -f; }
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
for m in /modules/*.ko; do $bb insmod "$m" || die "insmod $m failed"; done
out=$($bb sed -n 's/.*mp\.out=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$out" ] || die "no mp.out= on the kernel command line"
opts=trans=virtio,version=9p2000.L,msize=524288
$bb mount -t 9p -o $opts,ro,cache=loose hostroot /newroot || die "mounting the host root over 9p failed"
# The workspace (the run directory is its target/vm/run-*) may itself lie under /tmp or /run, as
# a CI clone can: keep it visible through the tmpfs mounted there.
ws=${out%/target/vm/*}
case "$ws" in /tmp/*|/run/*) keep=1 ;; *) keep= ;; esac
if [ -n "$keep" ]; then
  $bb mkdir -p /keep && $bb mount --bind "/newroot$ws" /keep || die "keeping $ws"
fi
for d in tmp run; do $bb mount -t tmpfs tmpfs "/newroot/$d" || die "tmpfs on /$d"; done
if [ -n "$keep" ]; then
  $bb mkdir -p "/newroot$ws" && $bb mount --move /keep "/newroot$ws" || die "re-exposing $ws"
fi
$bb mount -t 9p -o $opts,rw out "/newroot$out" || die "mounting the output share failed"
$bb cp $bb /newroot/run/busybox
for d in proc sys dev; do $bb mount --move "/$d" "/newroot/$d" || die "moving /$d"; done
exec $bb switch_root /newroot /bin/sh "$out/guest.sh"
"#;

/// Bump when the image layout changes in a way the stamp does not capture.
const FORMAT: u32 = 2;

/// A statically linked busybox: the initramfs holds no C library.
pub fn busybox_available() -> Result<(), String> {
    let missing = || {
        format!("no static {BUSYBOX} (Debian package busybox-static; scripts/setup.sh installs it)")
    };
    let elf = std::fs::read(BUSYBOX).map_err(|_| missing())?;
    if has_interpreter(&elf) {
        return Err(missing());
    }
    Ok(())
}

/// Whether a 64-bit little-endian ELF file asks for a dynamic loader (a PT_INTERP header).
fn has_interpreter(elf: &[u8]) -> bool {
    let u = |at: usize, n: usize| -> usize {
        elf.get(at..at + n)
            .map(|b| {
                b.iter()
                    .rev()
                    .fold(0usize, |v, &x| (v << 8) | usize::from(x))
            })
            .unwrap_or(0)
    };
    if !elf.starts_with(b"\x7fELF") {
        return true;
    }
    let (phoff, phentsize, phnum) = (u(0x20, 8), u(0x36, 2), u(0x38, 2));
    (0..phnum).any(|i| u(phoff + i * phentsize, 4) == 3)
}

/// The initramfs for `kernel`, built once per kernel package version.
pub fn ensure(kernel: &Kernel) -> anyhow::Result<PathBuf> {
    busybox_available().map_err(anyhow::Error::msg)?;
    let bb = std::fs::metadata(BUSYBOX)?;
    let stamp = format!(
        "format {FORMAT}\nbusybox {} {:?}\nmodules {MODULES:?}\ninit {:016x}\n",
        bb.len(),
        bb.modified()?,
        fnv1a(INIT.as_bytes())
    );
    let image = kernel.cache_dir().join("initramfs.cpio");
    let stamp_path = kernel.cache_dir().join("initramfs.stamp");
    if image.exists() && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(image);
    }
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, std::fs::read(BUSYBOX)?);
    cpio.file("init", 0o755, INIT.as_bytes().to_vec());
    for (i, (name, bytes)) in module_closure(kernel)?.into_iter().enumerate() {
        cpio.file(&format!("modules/{i:02}-{name}.ko"), 0o644, bytes);
    }
    let tmp = image.with_extension("cpio.tmp");
    std::fs::write(&tmp, cpio.finish())?;
    std::fs::rename(&tmp, &image)?;
    std::fs::write(&stamp_path, stamp)?;
    Ok(image)
}

/// The wanted modules and their dependencies (read from each module's `depends=` modinfo),
/// dependencies first, decompressed.
fn module_closure(kernel: &Kernel) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let dir = kernel.modules_dir();
    let mut index = std::collections::HashMap::new();
    index_modules(&dir.join("kernel"), &mut index)?;
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let builtin: std::collections::HashSet<String> = builtin
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(|f| norm(f.trim_end_matches(".ko")))
        .collect();
    let mut order = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for m in MODULES {
        visit(&norm(m), &index, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    index: &std::collections::HashMap<String, PathBuf>,
    builtin: &std::collections::HashSet<String>,
    seen: &mut std::collections::HashSet<String>,
    order: &mut Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    if !seen.insert(name.to_string()) || builtin.contains(name) {
        return Ok(());
    }
    let path = index
        .get(name)
        .with_context(|| format!("kernel module {name} is neither built in nor shipped"))?;
    let bytes = read_module(path)?;
    for dep in depends(&bytes) {
        visit(&norm(&dep), index, builtin, seen, order)?;
    }
    order.push((name.to_string(), bytes));
    Ok(())
}

fn index_modules(
    dir: &Path,
    index: &mut std::collections::HashMap<String, PathBuf>,
) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            if let Some((stem, _)) = name.split_once(".ko") {
                index.insert(norm(stem), path.clone());
            }
        }
    }
    Ok(())
}

/// Module names use `-` and `_` interchangeably.
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    if name.ends_with(".ko") {
        return std::fs::read(path).with_context(|| format!("reading {name}"));
    }
    if !name.ends_with(".ko.xz") {
        bail!("{name}: only plain and xz-compressed modules are supported");
    }
    let out = Command::new(BUSYBOX)
        .arg("xzcat")
        .arg(path)
        .output()
        .context("running busybox xzcat")?;
    if !out.status.success() {
        bail!("busybox xzcat {name} failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// The `depends=a,b` entry of a module's .modinfo section.
fn depends(module: &[u8]) -> Vec<String> {
    let key = b"depends=";
    let Some(at) = module.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &module[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A newc ("070701") cpio archive, the format the kernel unpacks into its initial rootfs.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 0, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: Vec<u8>) {
        self.entry(name, 0o100_000 | perm, 0, &data);
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, (major << 16) | minor, &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            u32::try_from(data.len()).expect("initramfs member under 4 GiB"),
            0,
            0,
            rdev >> 16,
            rdev & 0xffff,
            u32::try_from(name.len() + 1).expect("short name"),
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 0, &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::{depends, Cpio};

    #[test]
    fn depends_reads_the_modinfo_entry() {
        let m = b"\x7fELF...license=GPL\0depends=netfs,9pnet\0vermagic=6.1\0";
        assert_eq!(depends(m), ["netfs", "9pnet"]);
        assert!(depends(b"depends=\0name=veth\0").is_empty());
        assert!(depends(b"no modinfo here").is_empty());
    }

    #[test]
    fn cpio_entries_are_newc_and_four_byte_aligned() {
        let mut c = Cpio::default();
        c.char_dev("dev/console", 5, 1);
        c.file("init", 0o755, b"#!/bin/sh\n".to_vec());
        let buf = c.finish();
        assert!(buf.starts_with(b"070701"));
        assert_eq!(buf.len() % 4, 0);
        // dev/console: mode 020600, rdev 5:1 (fields 2, 11 and 12 of 8 hex digits each).
        let field = |i: usize| std::str::from_utf8(&buf[6 + 8 * i..14 + 8 * i]).unwrap();
        assert_eq!(field(1), "00002180");
        assert_eq!((field(9), field(10)), ("00000005", "00000001"));
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("init\0") && text.contains("#!/bin/sh\n"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!\0"));
    }
}
