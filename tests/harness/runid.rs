//! Per-run identifiers.
//!
//! A run id has the form `<pid>-<tag>` where `pid` is the decimal pid of the process that owns the
//! run and `tag` is 6 hex digits. The pid lets a later run decide whether the owner is gone (and
//! its leftovers can be removed); the tag keeps concurrent nodes of one process (parallel tests in
//! one `cargo test` binary) apart. No interface name contains the id (interfaces live in private
//! namespaces and have fixed names), so the 15-character IFNAMSIZ limit never applies to it; it is
//! kept short anyway so names stay readable in `ip netns list`.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::NAME_PREFIX;

/// Identifier of one harness run (one [`crate::Node`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RunId {
    pid: u32,
    tag: u32,
}

/// Process-wide counter so two ids made in the same nanosecond still differ.
static COUNTER: AtomicU64 = AtomicU64::new(0);

impl RunId {
    /// A fresh id owned by the current process.
    pub fn new() -> RunId {
        let pid = std::process::id();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // RandomState is seeded randomly per process, which adds entropy beyond pid and time
        // without pulling in a `rand` dependency.
        let mut h = RandomState::new().build_hasher();
        h.write_u32(pid);
        h.write_u128(nanos);
        h.write_u64(n);
        let tag = (h.finish() & 0xff_ffff) as u32;
        RunId { pid, tag }
    }

    /// The pid of the process that owns this run.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `mpt-<id>`: the base of every name of this run.
    pub fn base(&self) -> String {
        format!("{NAME_PREFIX}{self}")
    }

    /// Parse the run id out of a harness name such as `mpt-123-a1b2c3-p0` or `mpt-123-a1b2c3`.
    /// Returns `None` for anything that does not look like one of ours.
    pub fn parse_name(name: &str) -> Option<RunId> {
        let rest = name.strip_prefix(NAME_PREFIX)?;
        let mut parts = rest.split('-');
        let pid: u32 = parts.next()?.parse().ok()?;
        let tag_s = parts.next()?;
        if tag_s.len() != 6 {
            return None;
        }
        let tag = u32::from_str_radix(tag_s, 16).ok()?;
        Some(RunId { pid, tag })
    }
}

impl Default for RunId {
    fn default() -> Self {
        RunId::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:06x}", self.pid, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_uniqueness() {
        let a = RunId::new();
        let b = RunId::new();
        assert_ne!(a, b);
        assert_eq!(a.pid(), std::process::id());
        for suffix in ["", "-n", "-p12", "-out"] {
            let name = format!("{}{suffix}", a.base());
            assert_eq!(RunId::parse_name(&name), Some(a.clone()), "{name}");
        }
        assert_eq!(RunId::parse_name("mpt-x-abcdef"), None);
        assert_eq!(RunId::parse_name("mpt-12-abc"), None);
        assert_eq!(RunId::parse_name("other-12-abcdef"), None);
    }
}
