//! Whether this machine can run a privileged test, and the one way a test skips when it cannot:
//!
//! ```ignore
//! #[test]
//! fn a_privileged_test() {
//!     skip_unless!(AGENT); // returns at once, printing why, on a machine that lacks a feature
//!     ...
//! }
//! ```
//!
//! (`skip_unless!(NODE, Ok(()))` in a test that returns a `Result`.)
//!
//! A contributor without root (or on a kernel lacking a feature) gets a passing run with one
//! `SKIP <test>: <reason>` line per skipped test on stdout, written past libtest's output capture
//! so that it shows without `--nocapture` and `cargo xtask test` can count it.

use std::io::Write;
use std::sync::OnceLock;

use crate::sys;

/// What a privileged test needs from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Effective uid 0: network namespaces, cgroups, bpffs, loading programs.
    Root,
    /// A cgroup v2 hierarchy (`/sys/fs/cgroup/unified` on hybrid machines).
    Cgroup2,
    /// bpffs mounted at /sys/fs/bpf, or mountable (the kernel knows the `bpf` filesystem).
    Bpffs,
    /// The `ip` binary of iproute2.
    Ip,
    /// Sockhash maps: the agent's eBPF object always creates one.
    Sockmap,
    /// The Kubernetes control plane `scripts/kube-bins.sh` builds (see [`crate::kube`]).
    KubeBins,
    /// The `fortio` load generator and echo server (`scripts/setup.sh` installs it).
    Fortio,
}

/// What a test building a [`crate::Node`] needs.
pub const NODE: &[Feature] = &[Feature::Root, Feature::Cgroup2, Feature::Bpffs, Feature::Ip];

/// What a test starting the agent needs.
pub const AGENT: &[Feature] = &[
    Feature::Root,
    Feature::Cgroup2,
    Feature::Bpffs,
    Feature::Ip,
    Feature::Sockmap,
];

/// What a test of the harness's Kubernetes control plane alone needs (no root).
pub const KUBE: &[Feature] = &[Feature::KubeBins];

/// What a test starting the agent on the harness's Kubernetes control plane needs.
pub const KUBE_AGENT: &[Feature] = &[
    Feature::Root,
    Feature::Cgroup2,
    Feature::Bpffs,
    Feature::Ip,
    Feature::Sockmap,
    Feature::KubeBins,
];

impl Feature {
    /// Why a test that needs this feature is skipped.
    pub fn missing_reason(self) -> &'static str {
        match self {
            Feature::Root => "not root (privileged test: network namespaces, cgroups, eBPF)",
            Feature::Cgroup2 => {
                "no cgroup v2 hierarchy mounted (/sys/fs/cgroup/unified or /sys/fs/cgroup)"
            }
            Feature::Bpffs => "no bpffs: the kernel has no `bpf` filesystem",
            Feature::Ip => "no `ip` binary (install iproute2)",
            Feature::Sockmap => {
                "the kernel cannot create a sockhash map (CONFIG_BPF_STREAM_PARSER)"
            }
            Feature::KubeBins => "no Kubernetes binaries (run `bash scripts/kube-bins.sh`)",
            Feature::Fortio => "no fortio binary (run `bash scripts/setup.sh`)",
        }
    }
}

/// Proof that the features a test asked for are present; returned by [`privileged`].
#[derive(Debug)]
pub struct Privileged(());

/// The first of `needs` that `has` says is missing. Root is looked at first whatever its place
/// in `needs`, so a contributor without root always reads "not root", and the other probes (some
/// of which need root to answer at all) run only as root.
pub fn first_missing(needs: &[Feature], mut has: impl FnMut(Feature) -> bool) -> Option<Feature> {
    let mut root_first = needs
        .iter()
        .copied()
        .filter(|f| *f == Feature::Root)
        .chain(needs.iter().copied().filter(|f| *f != Feature::Root));
    root_first.find(|&f| !has(f))
}

/// The line a skipped test prints; `cargo xtask test` counts these.
pub fn skip_line(test: &str, reason: &str) -> String {
    format!("SKIP {test}: {reason}")
}

/// The test a [`skip_line`] names, wherever in `line` it stands: libtest may have written
/// `test <name> ... ` before it on the same line (one test thread).
pub fn skipped_test(line: &str) -> Option<&str> {
    let at = line.find("SKIP ")?;
    if at > 0 && !line[..at].ends_with(" ... ") {
        return None;
    }
    let (test, _reason) = line[at + "SKIP ".len()..].split_once(": ")?;
    (!test.is_empty() && !test.contains(' ')).then_some(test)
}

/// `Some` when this machine has every feature in `needs`; otherwise prints
/// `SKIP <test>: <reason>` and returns `None`, and the test returns at once.
pub fn privileged(needs: &[Feature]) -> Option<Privileged> {
    let Some(missing) = first_missing(needs, probe) else {
        return Some(Privileged(()));
    };
    // libtest names the thread of each test after it.
    let current = std::thread::current();
    let test = current.name().unwrap_or("<test>");
    // Straight to the process's stdout: `println!` would be captured (and dropped) for a test
    // that passes.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", skip_line(test, missing.missing_reason()));
    let _ = out.flush();
    None
}

/// Returns from the calling test (with `()`, or the value given second) unless this machine has
/// every feature of the first argument; see [`privileged`].
#[macro_export]
macro_rules! skip_unless {
    ($needs:expr) => {
        $crate::skip_unless!($needs, ())
    };
    ($needs:expr, $skipped:expr) => {
        if $crate::privileged($needs).is_none() {
            return $skipped;
        }
    };
}

/// Looks at this machine, once per feature and process.
fn probe(f: Feature) -> bool {
    static CACHE: [OnceLock<bool>; 7] = [const { OnceLock::new() }; 7];
    let slot = match f {
        Feature::Root => 0,
        Feature::Cgroup2 => 1,
        Feature::Bpffs => 2,
        Feature::Ip => 3,
        Feature::Sockmap => 4,
        Feature::KubeBins => 5,
        Feature::Fortio => 6,
    };
    *CACHE[slot].get_or_init(|| match f {
        Feature::Root => sys::is_root(),
        Feature::Cgroup2 => sys::cgroup2_root().is_ok(),
        Feature::Bpffs => sys::bpffs_supported(),
        Feature::Ip => sys::ip_available(),
        Feature::Sockmap => sys::sockhash_supported(),
        Feature::KubeBins => crate::kube::kube_bin_dir().is_ok(),
        Feature::Fortio => crate::fortio::binary().is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing_of(needs: &[Feature], absent: &[Feature]) -> Option<Feature> {
        first_missing(needs, |f| !absent.contains(&f))
    }

    #[test]
    fn not_root_is_the_reason_whatever_else_is_missing() {
        let all = [
            Feature::Root,
            Feature::Cgroup2,
            Feature::Bpffs,
            Feature::Ip,
            Feature::Sockmap,
        ];
        assert_eq!(missing_of(AGENT, &all), Some(Feature::Root));
        // Root is looked at first even when a list names it last.
        let late = [Feature::Ip, Feature::Root];
        assert_eq!(missing_of(&late, &all), Some(Feature::Root));
    }

    #[test]
    fn as_root_the_first_missing_feature_is_named() {
        assert_eq!(
            missing_of(AGENT, &[Feature::Cgroup2]),
            Some(Feature::Cgroup2)
        );
        assert_eq!(
            missing_of(AGENT, &[Feature::Sockmap, Feature::Ip]),
            Some(Feature::Ip)
        );
        assert_eq!(
            missing_of(AGENT, &[Feature::Sockmap]),
            Some(Feature::Sockmap)
        );
        assert_eq!(missing_of(AGENT, &[]), None);
        assert_eq!(
            missing_of(KUBE_AGENT, &[Feature::KubeBins]),
            Some(Feature::KubeBins)
        );
    }

    #[test]
    fn a_feature_a_test_does_not_need_is_not_looked_at() {
        // A node without the agent does not need sockhash maps, nor the control plane root.
        assert_eq!(missing_of(NODE, &[Feature::Sockmap]), None);
        assert_eq!(missing_of(KUBE, &[Feature::Root]), None);
        let mut asked = Vec::new();
        first_missing(NODE, |f| {
            asked.push(f);
            true
        });
        assert!(!asked.contains(&Feature::Sockmap), "{asked:?}");
        // Without root nothing else is probed.
        let mut asked = Vec::new();
        first_missing(AGENT, |f| {
            asked.push(f);
            f != Feature::Root
        });
        assert_eq!(asked, [Feature::Root]);
    }

    #[test]
    fn skip_lines_are_recognised_on_their_own_or_after_the_test_name() {
        let line = skip_line("conn_limit::x", "not root");
        assert_eq!(skipped_test(&line), Some("conn_limit::x"));
        let after = format!("test x ... {line}");
        assert_eq!(skipped_test(&after), Some("conn_limit::x"));
        assert_eq!(skipped_test("test result: ok. 5 passed"), None);
        assert_eq!(skipped_test("note: SKIP the rest: later"), None);
    }

    #[test]
    fn the_skip_line_names_test_and_reason() {
        assert_eq!(
            skip_line("lb_policy::round_robin", Feature::Root.missing_reason()),
            "SKIP lb_policy::round_robin: not root (privileged test: network namespaces, cgroups, eBPF)"
        );
    }
}
