//! Where a node, and so the endpoints on it, runs: Istio's locality, `region/zone/subzone`.

use std::collections::BTreeMap;
use std::fmt;

use crate::ObjectRef;

/// The node labels Istio reads a locality from.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

/// An empty part is unknown; two empty parts are equal, as Istio compares them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// From a node's (or pod's) labels.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Locality {
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        Locality {
            region: get(REGION_LABEL),
            zone: get(ZONE_LABEL),
            subzone: get(SUBZONE_LABEL),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.subzone)
    }
}

/// A Node: only its locality.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    /// As sources key cluster-scoped objects (namespace `default`).
    pub id: ObjectRef,
    /// `metadata.name`.
    pub name: String,
    pub locality: Locality,
}
