//! The same spans as OTLP/HTTP JSON (the body of `POST /v1/traces`): Zipkin's tags become
//! string attributes, the service name a resource attribute, one resource per client service.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::trace::Span;
use crate::zipkin::{micros_since_epoch, service_name, tags, TraceMeta};

/// OTLP's `SPAN_KIND_CLIENT`.
const KIND_CLIENT: u8 = 3;
/// OTLP's `STATUS_CODE_ERROR`.
const STATUS_ERROR: u8 = 2;

fn span_json(span: &Span, meta: &TraceMeta) -> Value {
    let start_ns = u128::from(micros_since_epoch(span)) * 1000;
    let end_ns = start_ns + span.duration.as_nanos();
    let attributes: Vec<Value> = tags(span, meta)
        .into_iter()
        .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}}))
        .collect();
    // OTLP ids are 16 bytes for traces: a 64-bit B3 trace id is left-padded.
    let trace_id = format!("{:0>32}", span.trace_id);
    let mut v = json!({
        "traceId": trace_id,
        "spanId": span.span_id,
        "name": span.operation,
        "kind": KIND_CLIENT,
        // 64-bit integers are strings in OTLP's JSON mapping.
        "startTimeUnixNano": start_ns.to_string(),
        "endTimeUnixNano": end_ns.to_string(),
        "attributes": attributes,
    });
    if let Some(p) = &span.parent_span_id {
        v["parentSpanId"] = Value::String(p.clone());
    }
    if span.status >= 500 {
        v["status"] = json!({"code": STATUS_ERROR});
    }
    v
}

/// A batch as one `ExportTraceServiceRequest`.
pub(crate) fn encode(spans: &[Span], meta: &TraceMeta) -> Vec<u8> {
    let mut by_service: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for s in spans {
        by_service
            .entry(service_name(s, meta))
            .or_default()
            .push(span_json(s, meta));
    }
    let resource_spans: Vec<Value> = by_service
        .into_iter()
        .map(|(service, spans)| {
            json!({
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"scope": {"name": "meshpath-proxy"}, "spans": spans}],
            })
        })
        .collect();
    serde_json::to_vec(&json!({"resourceSpans": resource_spans})).unwrap_or_default()
}
