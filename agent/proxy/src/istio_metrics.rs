//! Istio's standard HTTP metrics, named and labelled as istio/proxy's stats filter does
//! (`istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes`), every label always present (`unknown` when not known: Kiali skips
//! series that lack one).
//!
//! `reporter="source"`: the kernel steers the client's connect to this proxy, so it sees each
//! request where the client's sidecar would (before load balancing and retries), and Kiali
//! builds its graph edges from source-reported series.
//!
//! Cardinality: one series per (source workload, destination cluster, destination workload,
//! response code, flags, protocol); never per pod IP or path. Label values are shared
//! `Arc<str>`s taken from the workloads and cluster keys, so a request clones pointers rather
//! than building strings; the families are registered once and scraped in place.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use meshpath_model::l7::ClusterKey;

use crate::istio_series::{Held, Ptrs, Series, SeriesCache};
use crate::workload::Workload;

/// A label value shared between series.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct V(Arc<str>);

impl V {
    fn of(s: &str) -> V {
        V(Arc::from(s))
    }
}

impl EncodeLabelValue for V {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

/// A cluster's `destination_service*` labels, built once per snapshot (see `ClusterId`).
#[derive(Clone, Debug)]
pub(crate) struct ClusterLabels(Arc<ClusterValues>);

#[derive(Debug)]
struct ClusterValues {
    service: V,
    name: V,
    namespace: V,
}

impl ClusterLabels {
    pub(crate) fn of(k: &ClusterKey) -> ClusterLabels {
        ClusterLabels(Arc::new(ClusterValues {
            service: V(format!(
                "{}.{}.svc.cluster.local",
                k.service.name, k.service.namespace
            )
            .into()),
            name: V::of(&k.service.name),
            namespace: V::of(&k.service.namespace),
        }))
    }

    pub(crate) fn ptr(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

/// One side's workload labels, built once per workload and shared by its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side(Arc<SideValues>);

#[derive(Debug, PartialEq, Eq)]
struct SideValues {
    workload: V,
    namespace: V,
    app: V,
    version: V,
    canonical_service: V,
    canonical_revision: V,
}

impl Side {
    fn build(w: Option<&Workload>) -> Side {
        let v = |f: fn(&Workload) -> &str| V::of(w.map_or("unknown", f));
        Side(Arc::new(SideValues {
            workload: v(|w| &w.name),
            namespace: v(|w| &w.namespace),
            app: v(|w| &w.app),
            version: v(|w| &w.version),
            canonical_service: v(|w| &w.canonical_service),
            canonical_revision: v(|w| &w.canonical_revision),
        }))
    }

    pub(crate) fn ptr(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

/// Istio's label set (istio/proxy `istio_stats.cc`), in its order.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IstioLabels {
    reporter: V,
    source_workload: V,
    source_workload_namespace: V,
    source_principal: V,
    source_app: V,
    source_version: V,
    source_canonical_service: V,
    source_canonical_revision: V,
    source_cluster: V,
    destination_workload: V,
    destination_workload_namespace: V,
    destination_principal: V,
    destination_app: V,
    destination_version: V,
    destination_service: V,
    destination_service_name: V,
    destination_service_namespace: V,
    destination_canonical_service: V,
    destination_canonical_revision: V,
    destination_cluster: V,
    request_protocol: V,
    response_code: V,
    grpc_response_status: V,
    response_flags: V,
    connection_security_policy: V,
}

/// What one request contributes.
pub(crate) struct Observation<'a> {
    pub source: &'a Side,
    pub destination: &'a Side,
    pub cluster: Option<&'a ClusterLabels>,
    pub status: u16,
    pub flags: &'static str,
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// Istio's default buckets for `istio_request_duration_milliseconds`.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's byte-size buckets: powers of ten from 1 to 10^8.
fn byte_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1.0, 10.0, 9)
}

#[derive(Clone)]
pub struct IstioMetrics {
    requests: Family<IstioLabels, Counter>,
    duration: Family<IstioLabels, Histogram>,
    request_bytes: Family<IstioLabels, Histogram>,
    response_bytes: Family<IstioLabels, Histogram>,
    mesh: V,
    unknown: V,
    source: V,
    http: V,
    none: V,
    empty: V,
    unknown_side: Side,
    /// Each label set's series, by a key cheaper to hash than the labels.
    series: SeriesCache,
}

impl Default for IstioMetrics {
    fn default() -> Self {
        IstioMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            request_bytes: Family::new_with_constructor(|| Histogram::new(byte_buckets())),
            response_bytes: Family::new_with_constructor(|| Histogram::new(byte_buckets())),
            mesh: V::of("Kubernetes"),
            unknown: V::of("unknown"),
            source: V::of("source"),
            http: V::of("http"),
            none: V::of("none"),
            empty: V::of(""),
            unknown_side: Side::build(None),
            series: SeriesCache::default(),
        }
    }
}

impl IstioMetrics {
    /// Registers the families (shared, not copied: a scrape reads the live values).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "istio_requests",
            "Requests the node proxy handled (Istio standard metric)",
            self.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration until the response headers (Istio standard metric)",
            self.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes (Istio standard metric)",
            self.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes (Istio standard metric)",
            self.response_bytes.clone(),
        );
    }

    /// The workload's interned labels (`unknown` everywhere when not known).
    pub(crate) fn side<'a>(&'a self, w: Option<&'a Workload>) -> &'a Side {
        match w {
            Some(w) => w.metric_labels.get_or_init(|| Side::build(Some(w))),
            None => &self.unknown_side,
        }
    }

    pub(crate) fn observe(&self, o: &Observation<'_>) {
        let ptrs = Ptrs::new(o.source, o.destination, o.cluster, o.status, o.flags);
        let make = || {
            let held = Held {
                _source: o.source.clone(),
                _destination: o.destination.clone(),
                _cluster: o.cluster.cloned(),
            };
            (held, self.series_of(o))
        };
        self.series.with(ptrs, make, |series| {
            series.requests.inc();
            series.duration.observe(o.duration_ms);
            series.request_bytes.observe(o.request_bytes as f64);
            series.response_bytes.observe(o.response_bytes as f64);
        });
    }

    /// The families' series for `o`'s label set, created when new.
    fn series_of(&self, o: &Observation<'_>) -> Series {
        let unknown = self.unknown.clone();
        let (svc, svc_name, svc_ns) = match o.cluster {
            Some(c) => (c.0.service.clone(), c.0.name.clone(), c.0.namespace.clone()),
            None => (unknown.clone(), unknown.clone(), unknown.clone()),
        };
        let (s, d) = (&o.source.0, &o.destination.0);
        let labels = IstioLabels {
            reporter: self.source.clone(),
            source_workload: s.workload.clone(),
            source_workload_namespace: s.namespace.clone(),
            source_principal: unknown.clone(),
            source_app: s.app.clone(),
            source_version: s.version.clone(),
            source_canonical_service: s.canonical_service.clone(),
            source_canonical_revision: s.canonical_revision.clone(),
            source_cluster: self.mesh.clone(),
            destination_workload: d.workload.clone(),
            destination_workload_namespace: d.namespace.clone(),
            destination_principal: unknown.clone(),
            destination_app: d.app.clone(),
            destination_version: d.version.clone(),
            destination_service: svc,
            destination_service_name: svc_name,
            destination_service_namespace: svc_ns,
            destination_canonical_service: d.canonical_service.clone(),
            destination_canonical_revision: d.canonical_revision.clone(),
            destination_cluster: self.mesh.clone(),
            // Istio reports `http` for HTTP/1.1 and HTTP/2 alike (`grpc` for gRPC).
            request_protocol: self.http.clone(),
            response_code: V(o.status.to_string().into()),
            grpc_response_status: self.empty.clone(),
            response_flags: V::of(o.flags),
            // The node proxy speaks plain text to both sides (no mTLS yet).
            connection_security_policy: self.none.clone(),
        };
        Series {
            requests: self.requests.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            request_bytes: self.request_bytes.get_or_create(&labels).clone(),
            response_bytes: self.response_bytes.get_or_create(&labels).clone(),
        }
    }
}
