//! Who a client is, in Istio's terms: what spans and metrics name a workload by. The agent
//! derives it from the pod at the client's address (see `OriginalDst::source_workload`).

/// One workload's identity, built once per pod by the agent and shared by its connections.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    /// The owning workload's name (Deployment, else the pod's name), Istio's `source_workload`.
    pub name: String,
    pub namespace: String,
    /// The `app` label (`app.kubernetes.io/name` else), `unknown` when absent.
    pub app: String,
    /// The `version` label (`app.kubernetes.io/version` else), `unknown` when absent.
    pub version: String,
    /// `service.istio.io/canonical-name`, else the app, else the workload name.
    pub canonical_service: String,
    /// `service.istio.io/canonical-revision`, else the version, else `latest`.
    pub canonical_revision: String,
    /// `tracing.sampling` from the pod's `proxy.istio.io/config` annotation: overrides the
    /// proxy's percentage for new traces started by this workload's requests.
    pub trace_sampling: Option<f64>,
    /// This workload's metric label values, interned on first use by the proxy so requests
    /// clone pointers instead of building strings. Construct with `Default::default()`.
    pub metric_labels: std::sync::OnceLock<crate::istio_metrics::Side>,
}

impl Workload {
    /// The same identity (every field but the interned metric labels): a pod whose workload
    /// did not change keeps its `Arc<Workload>`, and with it the proxy's metric series.
    pub fn same_identity(&self, o: &Workload) -> bool {
        self.name == o.name
            && self.namespace == o.namespace
            && self.app == o.app
            && self.version == o.version
            && self.canonical_service == o.canonical_service
            && self.canonical_revision == o.canonical_revision
            && self.trace_sampling == o.trace_sampling
    }

    /// Envoy's `localEndpoint.serviceName` under Istio: `<app label>.<namespace>` (the
    /// canonical service when the pod has no app label, as istio-agent's service cluster).
    pub fn service_name(&self) -> String {
        let app = if self.app == "unknown" {
            &self.canonical_service
        } else {
            &self.app
        };
        format!("{app}.{}", self.namespace)
    }
}
