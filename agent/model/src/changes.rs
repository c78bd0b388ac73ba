//! Which objects changed between two snapshots of a source, so that the agent compiles and writes
//! only what they touch. A snapshot whose changes are unknown (the manifests source, a relist, a
//! VirtualService edited) says so, and the agent compiles everything.
//!
//! The agent may skip snapshots (the source publishes through a channel that keeps only the
//! newest), so a snapshot carries the change sets of the last few snapshots before it too: the
//! agent merges those since the one it last compiled, or compiles everything when they do not
//! reach back that far.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use crate::ObjectRef;

/// What changed from one snapshot to the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Services (by namespace/name) whose Service object or one of whose EndpointSlices was
    /// added, edited or deleted. An EndpointSlice counts for the Service it names, a
    /// DestinationRule for the Service its host names (before and after the change).
    pub services: BTreeSet<ObjectRef>,
    /// Pods added, edited or deleted.
    pub pods: BTreeSet<ObjectRef>,
    /// Something was changed that cannot be scoped to Services: a Namespace, an ExternalName
    /// Service, a VirtualService, a DestinationRule with a wildcard host, or a whole kind
    /// relisted.
    pub everything: bool,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        !self.everything && self.services.is_empty() && self.pods.is_empty()
    }

    pub fn merge(&mut self, other: &ChangeSet) {
        self.everything |= other.everything;
        // Once everything changed, the sets no longer matter: do not grow them.
        if self.everything {
            self.services.clear();
            self.pods.clear();
            return;
        }
        self.services.extend(other.services.iter().cloned());
        self.pods.extend(other.pods.iter().cloned());
    }
}

/// The change sets of a source's recent snapshots, newest last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// This snapshot's number; a source numbers its snapshots consecutively.
    pub seq: u64,
    /// `recent[i]` leads from snapshot `seq - recent.len() + i` to the next one.
    pub recent: VecDeque<Arc<ChangeSet>>,
}

impl Changes {
    /// How many snapshots back a source keeps change sets for.
    pub const KEPT: usize = 64;

    /// The next snapshot's changes: these, plus `set`.
    pub fn next(&self, set: ChangeSet) -> Changes {
        let mut recent = self.recent.clone();
        if recent.len() == Self::KEPT {
            recent.pop_front();
        }
        recent.push_back(Arc::new(set));
        Changes {
            seq: self.seq + 1,
            recent,
        }
    }

    /// Everything that changed since snapshot `seq`, or `None` when the kept sets do not reach
    /// back that far (or `seq` is not older than this snapshot).
    pub fn since(&self, seq: u64) -> Option<ChangeSet> {
        let back = self.seq.checked_sub(seq)?;
        if back == 0 || back > self.recent.len() as u64 {
            return None;
        }
        let mut merged = ChangeSet::default();
        for set in self.recent.iter().skip(self.recent.len() - back as usize) {
            merged.merge(set);
        }
        Some(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ChangeSet {
        ChangeSet {
            services: [ObjectRef::new("default", name)].into(),
            ..ChangeSet::default()
        }
    }

    #[test]
    fn since_merges_the_skipped_snapshots_and_gives_up_beyond_the_kept_ones() {
        let mut c = Changes::default();
        for name in ["a", "b", "c"] {
            c = c.next(svc(name));
        }
        assert_eq!(c.seq, 3);
        let got = c.since(1).expect("kept");
        assert_eq!(
            got.services,
            svc("b")
                .services
                .union(&svc("c").services)
                .cloned()
                .collect()
        );
        assert_eq!(c.since(3), None, "nothing newer than itself");
        assert_eq!(c.since(0).map(|s| s.services.len()), Some(3));
        for _ in 0..Changes::KEPT {
            c = c.next(svc("d"));
        }
        assert_eq!(c.since(2), None, "dropped");
        assert!(c.since(c.seq - 1).is_some());
    }

    #[test]
    fn everything_absorbs_the_sets() {
        let mut s = svc("a");
        s.merge(&ChangeSet {
            everything: true,
            ..ChangeSet::default()
        });
        assert!(s.everything && s.services.is_empty());
        s.merge(&svc("b"));
        assert!(s.services.is_empty());
    }
}
