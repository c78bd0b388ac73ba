//! Spans as Envoy's Zipkin tracer reports them for an Istio proxy, in Zipkin's v2 JSON (the body
//! of `POST /api/v2/spans`). The tags are the ones Envoy's HTTP connection manager and Istio's
//! tracing config put on every span; `otlp` reuses them as attributes.

use std::net::{IpAddr, SocketAddr};
use std::time::UNIX_EPOCH;

use serde_json::{json, Map, Value};

use crate::trace::Span;

/// What the proxy says about itself on every span.
#[derive(Clone, Debug)]
pub struct TraceMeta {
    /// Envoy's `node_id` tag (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local` for a sidecar;
    /// the agent passes its own).
    pub node_id: String,
    /// Istio's `istio.mesh_id` (`cluster.local` by default).
    pub mesh_id: String,
    /// `localEndpoint.serviceName` when the client's workload is unknown.
    pub fallback_service: String,
}

/// `<app>.<namespace>` of the client's workload, else the fallback.
pub(crate) fn service_name(span: &Span, meta: &TraceMeta) -> String {
    span.source
        .as_ref()
        .map_or_else(|| meta.fallback_service.clone(), |w| w.service_name())
}

/// The tags, in Envoy's and Istio's names.
pub(crate) fn tags(span: &Span, meta: &TraceMeta) -> Vec<(&'static str, String)> {
    let unknown = || "unknown".to_owned();
    let src = span.source.as_deref();
    let mut t = vec![
        ("component", "proxy".to_owned()),
        ("node_id", meta.node_id.clone()),
        ("zone", unknown()),
        (
            "guid:x-request-id",
            span.request_id.clone().unwrap_or_default(),
        ),
        (
            "http.url",
            format!("http://{}{}", span.authority, span.path),
        ),
        ("http.method", span.method.clone()),
        ("http.protocol", span.protocol.to_owned()),
        ("http.status_code", span.status.to_string()),
        ("downstream_cluster", "-".to_owned()),
        ("peer.address", span.peer.ip().to_string()),
        (
            "upstream_cluster",
            span.upstream_cluster.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "upstream_cluster.name",
            span.upstream_cluster.clone().unwrap_or_else(|| "-".into()),
        ),
        ("response_flags", span.response_flags.to_owned()),
        (
            "user_agent",
            span.user_agent.clone().unwrap_or_else(|| "-".into()),
        ),
        ("request_size", span.request_size.to_string()),
        ("response_size", span.response_size.to_string()),
        (
            "istio.canonical_service",
            src.map_or_else(unknown, |w| w.canonical_service.clone()),
        ),
        (
            "istio.canonical_revision",
            src.map_or_else(unknown, |w| w.canonical_revision.clone()),
        ),
        (
            "istio.namespace",
            src.map_or_else(unknown, |w| w.namespace.clone()),
        ),
        ("istio.mesh_id", meta.mesh_id.clone()),
    ];
    if let Some(a) = span.upstream_addr {
        t.push(("upstream_address", a.to_string()));
    }
    if span.status >= 500 {
        t.push(("error", "true".to_owned()));
    }
    t
}

pub(crate) fn micros_since_epoch(span: &Span) -> u64 {
    span.start
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn endpoint(addr: SocketAddr) -> Value {
    match addr.ip() {
        IpAddr::V4(ip) => json!({"ipv4": ip.to_string(), "port": addr.port()}),
        IpAddr::V6(ip) => json!({"ipv6": ip.to_string(), "port": addr.port()}),
    }
}

/// One span in Zipkin v2 JSON. Kind `CLIENT`: the node proxy acts for the client workload (the
/// kernel steered the client's connect to it), as the client sidecar's outbound span would.
pub(crate) fn span_json(span: &Span, meta: &TraceMeta) -> Value {
    let mut tag_map = Map::new();
    for (k, v) in tags(span, meta) {
        tag_map.insert(k.to_owned(), Value::String(v));
    }
    let mut local = json!({"serviceName": service_name(span, meta)});
    if let IpAddr::V4(ip) = span.peer.ip() {
        local["ipv4"] = Value::String(ip.to_string());
    }
    let mut v = json!({
        "traceId": span.trace_id,
        "id": span.span_id,
        "name": span.operation,
        "kind": "CLIENT",
        "timestamp": micros_since_epoch(span),
        // Zipkin drops a zero duration; a span always took some time.
        "duration": u64::try_from(span.duration.as_micros()).unwrap_or(u64::MAX).max(1),
        "localEndpoint": local,
        "tags": tag_map,
    });
    if let Some(p) = &span.parent_span_id {
        v["parentId"] = Value::String(p.clone());
    }
    if let Some(a) = span.upstream_addr {
        v["remoteEndpoint"] = endpoint(a);
    }
    v
}

/// A batch: the JSON array Zipkin's `/api/v2/spans` takes.
pub(crate) fn encode(spans: &[Span], meta: &TraceMeta) -> Vec<u8> {
    let all: Vec<Value> = spans.iter().map(|s| span_json(s, meta)).collect();
    serde_json::to_vec(&all).unwrap_or_default()
}
