//! The series one request adds to, found by a cheap key: the label values that vary per
//! request (both sides, the cluster, status and flags) compared by pointer, since each is
//! interned (a workload's `Side` once per workload, a cluster's labels once per snapshot).
//! Without it every request would build Istio's 26 labels and hash them four times, once per
//! family. The cached series share their values with the families (prometheus-client
//! metrics are handles), so a scrape sees the same numbers.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::istio_metrics::{ClusterLabels, Side};

/// Entries kept before the cache starts over: label sets of clusters from older snapshots
/// are not looked up again, and the families keep their series whatever happens here.
const MAX_ENTRIES: usize = 4096;

/// A label set's four series.
pub(crate) struct Series {
    pub requests: Counter,
    pub duration: Histogram,
    pub request_bytes: Histogram,
    pub response_bytes: Histogram,
}

/// Holds its interned values, so a pointer it compares can never be reused for another
/// value while it is cached.
#[derive(Clone)]
pub(crate) struct Key {
    pub source: Side,
    pub destination: Side,
    pub cluster: Option<ClusterLabels>,
    pub status: u16,
    pub flags: &'static str,
}

impl PartialEq for Key {
    fn eq(&self, o: &Key) -> bool {
        self.source.same(&o.source)
            && self.destination.same(&o.destination)
            && match (&self.cluster, &o.cluster) {
                (Some(a), Some(b)) => a.same(b),
                (None, None) => true,
                _ => false,
            }
            && self.status == o.status
            && self.flags == o.flags
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.source.ptr().hash(h);
        self.destination.ptr().hash(h);
        self.cluster.as_ref().map(ClusterLabels::ptr).hash(h);
        self.status.hash(h);
        self.flags.hash(h);
    }
}

#[derive(Clone, Default)]
pub(crate) struct SeriesCache(Arc<RwLock<HashMap<Key, Arc<Series>>>>);

impl SeriesCache {
    /// The series of `key`, made by `make` (from the families) the first time.
    pub(crate) fn get(&self, key: Key, make: impl FnOnce() -> Series) -> Arc<Series> {
        if let Some(s) = self.0.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return s.clone();
        }
        let series = Arc::new(make());
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(key, series.clone());
        series
    }
}
