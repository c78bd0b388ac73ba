//! Request identity and trace context, as Envoy's sidecar does it for Istio: `x-request-id`
//! (UUID v4) when absent, and B3 multi-header propagation (`x-b3-traceid` 128-bit,
//! `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`). The proxy is one span of the trace:
//! a request that already carries a trace id continues it (the caller's span becomes our
//! parent), one that carries none starts a new trace.
//!
//! `x-ot-span-context` and any other header pass through untouched, as in Envoy's Zipkin mode.
//! Span export plugs in through [`SpanExporter`]; until one is set nothing is built, so the
//! request path pays only for the headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::workload::Workload;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub(crate) static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub(crate) static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub(crate) static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub(crate) static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
pub(crate) static B3: HeaderName = HeaderName::from_static("b3");

/// One finished proxy span, handed to the exporter when the response headers are sent.
/// Exporters (`zipkin`, `otlp`) turn it into the span Envoy's Zipkin tracer reports for Istio.
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
    /// The request's `user-agent`, Envoy's `user_agent` tag (`-` when absent).
    pub user_agent: Option<String>,
    /// Request and response body bytes (Envoy's `request_size`, `response_size`): the
    /// `content-length`s, as the proxy's metrics count them; a streamed body of unknown length
    /// counts 0.
    pub request_size: u64,
    pub response_size: u64,
    pub authority: String,
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2`, as Envoy's `http.protocol` tag spells it.
    pub protocol: &'static str,
    pub status: u16,
    /// Envoy's name of the cluster the request went to (`outbound|port|subset|host`), if any.
    pub upstream_cluster: Option<String>,
    pub upstream_addr: Option<SocketAddr>,
    /// Istio's operation name: `<host>:<port>/*`.
    pub operation: String,
    /// Envoy's response flags (`-` when none).
    pub response_flags: &'static str,
    /// The ClusterIP:port the client connected to.
    pub original_dst: Option<SocketAddr>,
    pub peer: SocketAddr,
    /// The client's workload, when the proxy knows the pod at `peer`.
    pub source: Option<Arc<Workload>>,
}

/// Where finished spans go (see `export`). Called on the request path: implementations must
/// not block (queue and export from their own task).
pub trait SpanExporter: Send + Sync {
    fn export(&self, span: Span);
}

/// Fills in the request id and B3 headers and tells whether the request is sampled.
/// `sampling` is the percentage of NEW traces sampled; an incoming decision (`x-b3-sampled`,
/// the debug flag `x-b3-flags: 1`, or the sampling field of a single `b3` header) wins, as in
/// Envoy. A single `b3` header is read when no `x-b3-traceid` is present, and rewritten with
/// the new span so the next hop does not read a stale context from it.
pub(crate) fn ensure_headers(headers: &mut HeaderMap, sampling: f64) -> bool {
    // Room for what this and the router add, so the map grows once instead of per insert.
    headers.reserve(8);
    // Which trace headers the request has, in one pass over its names: most have none, and
    // each absent one would otherwise cost a hashed lookup.
    let mut has = Present::of(headers);
    if has.b3 && !has.trace_id {
        if let Some(v) = headers.get(&B3).cloned() {
            expand_b3(headers, v.as_bytes());
            has = Present::of(headers);
        }
    }
    let continuing = has.trace_id;
    let fresh = Fresh::new(!has.request_id, !continuing);
    if let Some(rid) = fresh.request_id {
        headers.insert(X_REQUEST_ID.clone(), rid);
    }
    if continuing {
        // Continue the caller's trace: its span is our parent.
        match has
            .span_id
            .then(|| headers.get(&X_B3_SPANID).cloned())
            .flatten()
        {
            Some(parent) => {
                headers.insert(X_B3_PARENTSPANID.clone(), parent);
            }
            None if has.parent => {
                headers.remove(&X_B3_PARENTSPANID);
            }
            None => {}
        }
    } else {
        // A stale parent without a trace id means nothing: drop it.
        if has.parent {
            headers.remove(&X_B3_PARENTSPANID);
        }
        if let Some(trace_id) = fresh.trace_id {
            headers.insert(X_B3_TRACEID.clone(), trace_id);
        }
    }
    headers.insert(X_B3_SPANID.clone(), fresh.span_id);
    let debug = has.flags
        && headers
            .get(&X_B3_FLAGS)
            .is_some_and(|v| v.as_bytes() == b"1");
    let incoming = if has.sampled {
        headers.get(&X_B3_SAMPLED)
    } else {
        None
    };
    let sampled = match incoming {
        _ if debug => true,
        Some(v) => v.as_bytes() == b"1" || v.as_bytes().eq_ignore_ascii_case(b"true"),
        None => {
            let s = decide(sampling);
            headers.insert(
                X_B3_SAMPLED.clone(),
                HeaderValue::from_static(if s { "1" } else { "0" }),
            );
            s
        }
    };
    if has.b3 {
        rewrite_b3(headers, sampled, debug);
    }
    sampled
}

/// The trace headers a request carries.
#[derive(Default)]
struct Present {
    request_id: bool,
    trace_id: bool,
    span_id: bool,
    parent: bool,
    sampled: bool,
    flags: bool,
    b3: bool,
}

impl Present {
    fn of(headers: &HeaderMap) -> Present {
        let mut p = Present::default();
        for name in headers.keys() {
            match name.as_str() {
                "x-request-id" => p.request_id = true,
                "x-b3-traceid" => p.trace_id = true,
                "x-b3-spanid" => p.span_id = true,
                "x-b3-parentspanid" => p.parent = true,
                "x-b3-sampled" => p.sampled = true,
                "x-b3-flags" => p.flags = true,
                "b3" => p.b3 = true,
                _ => {}
            }
        }
        p
    }
}

/// `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]` or a bare sampling state (`0`, `1`,
/// `d`) into the multi headers. Malformed values are ignored (a new trace starts).
fn expand_b3(headers: &mut HeaderMap, v: &[u8]) {
    let Ok(v) = std::str::from_utf8(v) else {
        return;
    };
    let mut parts = v.split('-');
    let first = parts.next().unwrap_or_default();
    let sampling = |h: &mut HeaderMap, s: &str| match s {
        "1" | "0" => {
            h.insert(
                X_B3_SAMPLED.clone(),
                HeaderValue::from_static(if s == "1" { "1" } else { "0" }),
            );
        }
        "d" => {
            h.insert(X_B3_FLAGS.clone(), HeaderValue::from_static("1"));
        }
        _ => {}
    };
    let Some(span) = parts.next() else {
        sampling(headers, first);
        return;
    };
    let hex_id = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if !hex_id(first, &[16, 32]) || !hex_id(span, &[16]) {
        return;
    }
    let value = |s: &str| HeaderValue::from_str(s).expect("hex digits are a valid header value");
    headers.insert(X_B3_TRACEID.clone(), value(first));
    headers.insert(X_B3_SPANID.clone(), value(span));
    if let Some(s) = parts.next() {
        sampling(headers, s);
    }
}

fn rewrite_b3(headers: &mut HeaderMap, sampled: bool, debug: bool) {
    let get = |n: &HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(trace), Some(span)) = (get(&X_B3_TRACEID), get(&X_B3_SPANID)) else {
        return;
    };
    let state = if debug {
        "d"
    } else if sampled {
        "1"
    } else {
        "0"
    };
    let mut v = format!("{trace}-{span}-{state}");
    if let Some(parent) = get(&X_B3_PARENTSPANID) {
        v.push('-');
        v.push_str(parent);
    }
    if let Ok(v) = HeaderValue::try_from(v) {
        headers.insert(B3.clone(), v);
    }
}

/// New ids for one request, formatted into one shared buffer (one allocation, not three).
struct Fresh {
    request_id: Option<HeaderValue>,
    trace_id: Option<HeaderValue>,
    span_id: HeaderValue,
}

impl Fresh {
    fn new(request_id: bool, trace_id: bool) -> Fresh {
        let mut buf = [0u8; 36 + 32 + 16];
        let mut len = 0;
        if request_id {
            uuid_v4(&mut buf[..36]);
            len = 36;
        }
        if trace_id {
            hex(&random_bytes::<16>(), &mut buf[len..len + 32]);
            len += 32;
        }
        hex(&random_bytes::<8>(), &mut buf[len..len + 16]);
        len += 16;
        let all = Bytes::copy_from_slice(&buf[..len]);
        let value = |r: std::ops::Range<usize>| {
            let b = if r.len() == all.len() {
                all.clone()
            } else {
                all.slice(r)
            };
            debug_assert!(b.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-'));
            // SAFETY: hex digits and dashes only (written just above), all valid in a value;
            // skips a per-byte check of ids generated per request.
            unsafe { HeaderValue::from_maybe_shared_unchecked(b) }
        };
        let mut at = 0;
        let mut take = |n: usize| {
            at += n;
            value(at - n..at)
        };
        Fresh {
            request_id: request_id.then(|| take(36)),
            trace_id: trace_id.then(|| take(32)),
            span_id: take(16),
        }
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    for chunk in b.chunks_mut(8) {
        chunk.copy_from_slice(&fastrand::u64(..).to_be_bytes()[..chunk.len()]);
    }
    b
}

fn decide(sampling: f64) -> bool {
    sampling >= 100.0 || (sampling > 0.0 && fastrand::f64() * 100.0 < sampling)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes` into `out` (twice as long).
fn hex(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// A random (version 4, RFC 4122 variant) UUID, `8-4-4-4-12` lower-case hex, into `out`.
fn uuid_v4(out: &mut [u8]) {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut o = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        hex(&[*byte], &mut out[o..o + 2]);
        o += 2;
    }
}

pub(crate) fn value_string(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

#[cfg(test)]
#[path = "trace_tests.rs"]
mod tests;
