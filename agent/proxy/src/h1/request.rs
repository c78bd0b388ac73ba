//! A client's HTTP/1.1 request head, parsed for the proxy's own server (`serve`) when it is one
//! that server handles whole: origin-form target, no transfer coding, no upgrade, no `Expect`,
//! a body of known length small enough to read with the head. Anything else, malformed heads
//! included, is left untouched for hyper's server, which then answers as it always has.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Uri, Version};

use super::wire::{decimal, list, note_spans, Span, MAX_HEADERS};

/// The largest head read before giving the connection to hyper (which answers 431 past its
/// own limit).
const MAX_HEAD_BYTES: usize = 64 * 1024;

// Returned once per request and matched at once; boxing the head would cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A request to serve: its head (taken off the buffer), its body's length, and whether the
    /// client asked to close the connection after it.
    Request {
        parts: Parts,
        body_len: usize,
        close: bool,
    },
    /// The head is not complete yet.
    Partial,
    /// Not one for this server: hyper's takes the connection from here, bytes untouched.
    HandOver,
}

/// Parses the request at the front of `buf`; `max_body` is the largest body read whole.
pub(crate) fn parse(buf: &mut BytesMut, max_body: usize) -> Parsed {
    let mut spans: [Span; MAX_HEADERS] = [(0, 0, 0, 0); MAX_HEADERS];
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let (len, count, method, target) = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if req.version == Some(1) => {
            note_spans(buf, req.headers, &mut spans);
            let base = buf.as_ptr() as usize;
            let path = req.path.unwrap_or_default();
            let target = path.as_ptr() as usize - base;
            let Ok(method) = Method::from_bytes(req.method.unwrap_or_default().as_bytes()) else {
                return Parsed::HandOver;
            };
            (
                len,
                req.headers.len(),
                method,
                (target, target + path.len()),
            )
        }
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => return Parsed::Partial,
        // HTTP/1.0, an h2 preface, a broken or oversized head: hyper's server handles those.
        _ => return Parsed::HandOver,
    };
    if method == Method::CONNECT || !buf[target.0..target.1].starts_with(b"/") {
        return Parsed::HandOver; // authority or absolute form, `*`
    }
    // First what decides whether the request is ours, on the raw names (most heads have none
    // of these: a length compare each).
    let mut body_len = None;
    let mut close = false;
    for &(n0, n1, v0, v1) in &spans[..count] {
        let name = &buf[n0 as usize..n1 as usize];
        let value = &buf[v0 as usize..v1 as usize];
        let is = |n: &HeaderName| name.eq_ignore_ascii_case(n.as_str().as_bytes());
        if is(&CONTENT_LENGTH) {
            match (
                body_len,
                decimal(value).and_then(|n| usize::try_from(n).ok()),
            ) {
                (None, Some(n)) if n <= max_body => body_len = Some(n),
                _ => return Parsed::HandOver, // repeated, invalid or large: streamed by hyper
            }
        } else if is(&TRANSFER_ENCODING) || is(&EXPECT) || is(&UPGRADE) {
            return Parsed::HandOver;
        } else if is(&CONNECTION) {
            for token in list(value) {
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::HandOver;
                }
                close |= token.eq_ignore_ascii_case(b"close");
            }
        }
    }
    let head = buf.split_to(len).freeze();
    // Puts the head back for hyper (rare: httparse let through what `http` refuses).
    let hand_over = |buf: &mut BytesMut| {
        let mut whole = BytesMut::from(&head[..]);
        whole.extend_from_slice(buf);
        *buf = whole;
        Parsed::HandOver
    };
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target.0..target.1)) else {
        return hand_over(buf);
    };
    // Room for the headers the proxy adds (trace, attempt count, forwarding).
    let mut map = HeaderMap::with_capacity(count + 8);
    for &(n0, n1, v0, v1) in &spans[..count] {
        let Ok(name) = HeaderName::from_bytes(&head[n0 as usize..n1 as usize]) else {
            return hand_over(buf);
        };
        // SAFETY: httparse accepted the value's bytes, by the rule `HeaderValue` checks (HTAB,
        // and bytes from SP on but DEL); hyper builds its values the same way.
        let value = unsafe {
            HeaderValue::from_maybe_shared_unchecked(head.slice(v0 as usize..v1 as usize))
        };
        map.append(name, value);
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = map;
    Parsed::Request {
        parts,
        body_len: body_len.unwrap_or(0),
        close,
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
