//! Metrics of the agent's sync loop (source → compile → maps), served at the admin `/metrics`
//! next to the proxy's Envoy-named ones: how many watch events arrived, how many snapshots they
//! became, how many watch failures were retried, and how long a change took from the source to
//! the maps.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Cheap to clone: every field shares its value with its clones.
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    /// Watch events received from the Kubernetes API (relist items included).
    pub events: Counter,
    /// Snapshots of the cluster published to the reconciler (bursts of events coalesce).
    pub snapshots: Counter,
    /// Watch or discovery failures, each retried with backoff.
    pub watch_errors: Counter,
    /// Seconds from a change reaching the source to its maps and routes being written.
    pub change_to_programmed: Histogram,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        Self {
            events: Counter::default(),
            snapshots: Counter::default(),
            watch_errors: Counter::default(),
            // 100 µs .. ~3.3 s
            change_to_programmed: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

impl SyncMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("meshpath_sync");
        r.register(
            "watch_events",
            "Kubernetes watch events received",
            self.events.clone(),
        );
        r.register(
            "snapshots",
            "Cluster snapshots published to the reconciler",
            self.snapshots.clone(),
        );
        r.register(
            "watch_errors",
            "Watch or discovery failures retried with backoff",
            self.watch_errors.clone(),
        );
        r.register(
            "change_to_programmed_seconds",
            "From a change reaching the source to its maps being written",
            self.change_to_programmed.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_in_prometheus_text() {
        let m = SyncMetrics::default();
        m.events.inc_by(3);
        m.change_to_programmed.observe(0.002);
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encodes");
        assert!(out.contains("meshpath_sync_watch_events_total 3"), "{out}");
        assert!(
            out.contains("meshpath_sync_change_to_programmed_seconds_count 1"),
            "{out}"
        );
    }
}
