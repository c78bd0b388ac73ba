//! The series one request adds to, found by a cheap key: the label values that vary per
//! request (both sides, the cluster, status and flags) compared by pointer, since each is
//! interned (a workload's `Side` once per workload, a cluster's labels once per snapshot).
//! Without it every request would build Istio's 26 labels and hash them four times, once per
//! family. The cached series share their values with the families (prometheus-client
//! metrics are handles), so a scrape sees the same numbers.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
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

/// The interned values a cached entry's addresses point at, held so that an address it
/// compares can never be reused for another value while it is cached.
pub(crate) struct Held {
    pub _source: Side,
    pub _destination: Side,
    pub _cluster: Option<ClusterLabels>,
}

/// What a lookup compares: the interned values' addresses, copied without touching their
/// reference counts. `flags` by address too: equal flags at two addresses make two entries
/// for the same series, which the families share.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Ptrs {
    source: usize,
    destination: usize,
    cluster: usize,
    flags: usize,
    status: u16,
}

impl Ptrs {
    pub(crate) fn new(
        source: &Side,
        destination: &Side,
        cluster: Option<&ClusterLabels>,
        status: u16,
        flags: &'static str,
    ) -> Ptrs {
        Ptrs {
            source: source.ptr(),
            destination: destination.ptr(),
            cluster: cluster.map_or(0, ClusterLabels::ptr),
            flags: flags.as_ptr() as usize,
            status,
        }
    }
}

/// A multiply-rotate hash over a few words (FxHash's): the keys are addresses, which need
/// no protection against chosen collisions, and SipHash cost more than the rest of a lookup.
#[derive(Default)]
pub(crate) struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type Map = HashMap<Ptrs, (Held, Series), BuildHasherDefault<WordHasher>>;

#[derive(Clone, Default)]
pub(crate) struct SeriesCache(Arc<RwLock<Map>>);

impl SeriesCache {
    /// Runs `f` on the series of `ptrs`, made by `make` (the values it points at, and the
    /// families' series) the first time.
    pub(crate) fn with(
        &self,
        ptrs: Ptrs,
        make: impl FnOnce() -> (Held, Series),
        f: impl Fn(&Series),
    ) {
        if let Some((_, s)) = self.0.read().unwrap_or_else(|p| p.into_inner()).get(&ptrs) {
            return f(s);
        }
        let (held, series) = make();
        f(&series);
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(ptrs, (held, series));
    }
}
