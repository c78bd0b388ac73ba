//! Request identity and trace context, as Envoy's sidecar does it for Istio: `x-request-id`
//! (UUID v4) when absent, and B3 multi-header propagation (`x-b3-traceid` 128-bit,
//! `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`). The proxy is one span of the trace:
//! a request that already carries a trace id continues it (the caller's span becomes our
//! parent), one that carries none starts a new trace.
//!
//! Span export plugs in through [`SpanExporter`]; until one is set nothing is built, so the
//! request path pays only for the headers.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub(crate) static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub(crate) static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub(crate) static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");

/// One finished proxy span, handed to the exporter when the response headers are sent.
#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub request_id: Option<String>,
    pub start: SystemTime,
    /// Until the response headers were ready (the body may still be streaming).
    pub duration: Duration,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub status: u16,
    /// `namespace/name:port[/subset]` of the cluster the request went to, if any.
    pub upstream_cluster: Option<String>,
    pub upstream_addr: Option<SocketAddr>,
}

/// Where finished spans go (Zipkin, OTLP, ...: a later issue). Called on the request path:
/// implementations must not block (queue and export from their own task).
pub trait SpanExporter: Send + Sync {
    fn export(&self, span: Span);
}

/// The trace identity of one request after [`ensure_headers`]: cheap clones of the header
/// values, so building a [`Span`] later needs no parsing.
#[derive(Debug)]
pub(crate) struct TraceIds {
    pub sampled: bool,
    pub trace_id: HeaderValue,
    pub span_id: HeaderValue,
    pub parent_span_id: Option<HeaderValue>,
}

/// Fills in the request id and B3 headers. `sampling` is the percentage of NEW traces
/// sampled; a continued trace keeps the caller's decision.
pub(crate) fn ensure_headers(headers: &mut HeaderMap, sampling: f64) -> TraceIds {
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID.clone(), uuid_v4());
    }
    let span_id = hex_value(&fastrand::u64(..).to_be_bytes());
    if let Some(trace_id) = headers.get(&X_B3_TRACEID).cloned() {
        // Continue the caller's trace: its span is our parent.
        let parent = headers.get(&X_B3_SPANID).cloned();
        match &parent {
            Some(p) => {
                headers.insert(X_B3_PARENTSPANID.clone(), p.clone());
            }
            None => {
                headers.remove(&X_B3_PARENTSPANID);
            }
        }
        headers.insert(X_B3_SPANID.clone(), span_id.clone());
        let sampled = match headers.get(&X_B3_SAMPLED) {
            Some(v) => v.as_bytes() == b"1" || v.as_bytes().eq_ignore_ascii_case(b"true"),
            None => {
                let s = decide(sampling);
                headers.insert(X_B3_SAMPLED.clone(), sampled_value(s));
                s
            }
        };
        TraceIds {
            sampled,
            trace_id,
            span_id,
            parent_span_id: parent,
        }
    } else {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
        id[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
        let trace_id = hex_value(&id);
        // A stale parent without a trace id means nothing: drop it.
        headers.remove(&X_B3_PARENTSPANID);
        headers.insert(X_B3_TRACEID.clone(), trace_id.clone());
        headers.insert(X_B3_SPANID.clone(), span_id.clone());
        let sampled = match headers.get(&X_B3_SAMPLED) {
            Some(v) => v.as_bytes() == b"1",
            None => {
                let s = decide(sampling);
                headers.insert(X_B3_SAMPLED.clone(), sampled_value(s));
                s
            }
        };
        TraceIds {
            sampled,
            trace_id,
            span_id,
            parent_span_id: None,
        }
    }
}

fn decide(sampling: f64) -> bool {
    sampling >= 100.0 || (sampling > 0.0 && fastrand::f64() * 100.0 < sampling)
}

fn sampled_value(s: bool) -> HeaderValue {
    HeaderValue::from_static(if s { "1" } else { "0" })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of up to 16 bytes, formatted on the stack.
fn hex_value(bytes: &[u8]) -> HeaderValue {
    let mut buf = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        buf[2 * i] = HEX[usize::from(b >> 4)];
        buf[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    HeaderValue::from_bytes(&buf[..2 * bytes.len()]).expect("hex digits are a valid header value")
}

/// A random (version 4, RFC 4122 variant) UUID, `8-4-4-4-12` lower-case hex.
pub(crate) fn uuid_v4() -> HeaderValue {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    b[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[usize::from(byte >> 4)];
        out[o + 1] = HEX[usize::from(byte & 0xf)];
        o += 2;
    }
    HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
}

pub(crate) fn value_string(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}
