//! HTTP/1.1 on the wire, client side: a request head written straight from the request's
//! `HeaderMap`, and a response head parsed by `httparse` into `http` types whose header values
//! share the bytes read (no copy), as hyper does. Framing follows RFC 9112 §6.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode, Version};

use super::error::WireError;

/// hyper's defaults: at most 100 response headers, and a head of at most this many bytes.
pub(crate) const MAX_HEADERS: usize = 100;
pub(crate) const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// Where a header's name and value lie in the parsed buffer (name start, end, value start,
/// end), so both can be cut out of the head once it is frozen, without a copy.
pub(crate) type Span = (u32, u32, u32, u32);

/// Records the spans of `headers`, which httparse parsed out of `buf`.
pub(crate) fn note_spans(buf: &[u8], headers: &[httparse::Header<'_>], spans: &mut [Span]) {
    let base = buf.as_ptr() as usize;
    for (span, h) in spans.iter_mut().zip(headers) {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        *span = (
            name as u32,
            (name + h.name.len()) as u32,
            value as u32,
            (value + h.value.len()) as u32,
        );
    }
}

/// How the message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 1xx, 204, 304, or an empty request).
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes the connection (a response only).
    Close,
}

/// Writes the request head into `out`, with the framing header the body needs when the request
/// has none: `content-length` when the length is known, else chunked transfer coding.
/// `body_len` is `Some(n)` for a body of known length, `None` for one of unknown length.
pub(crate) fn encode_head(req: &Parts, body_len: Option<u64>, out: &mut Vec<u8>) -> Framing {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    let uri = &req.uri;
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_none() => out.extend_from_slice(pq.as_str().as_bytes()),
        // Absolute form (or authority form) as given; an empty path is `/`.
        _ if uri.scheme().is_some() || uri.authority().is_some() => {
            out.extend_from_slice(uri.to_string().as_bytes())
        }
        _ => out.push(b'/'),
    }
    out.extend_from_slice(if req.version == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    let headers = &req.headers;
    let mut framing = None;
    for (name, value) in headers {
        if name == TRANSFER_ENCODING {
            // The body's framing is decided here, from what is sent (a chunked client
            // request may have been buffered whole).
            continue;
        }
        if name == CONTENT_LENGTH {
            if let Some(n) = value.to_str().ok().and_then(|v| v.trim().parse().ok()) {
                framing = Some(if n == 0 {
                    Framing::Empty
                } else {
                    Framing::Length(n)
                });
            }
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match (framing, body_len) {
        (Some(f), _) => f,
        (None, Some(0)) => Framing::Empty,
        (None, Some(n)) => {
            out.extend_from_slice(b"content-length: ");
            put_decimal(n, out);
            out.extend_from_slice(b"\r\n");
            Framing::Length(n)
        }
        (None, None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// A decimal length (`content-length`, one list element): digits only, surrounding spaces
/// allowed, at most 19 digits so it fits.
pub(crate) fn decimal(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The elements of a comma-separated header value (RFC 9110 §5.6.1), spaces trimmed.
pub(crate) fn list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// Appends `n` in decimal.
pub(crate) fn put_decimal(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa(n, &mut [0; 20]));
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A parsed response head and what follows it.
#[derive(Debug)]
pub(crate) struct Head {
    pub response: Response<()>,
    pub framing: Framing,
    /// The connection may carry another request once this response is read.
    pub keep_alive: bool,
}

/// Parses one response head from the front of `buf`, removing it; `None` while incomplete.
/// `method` is the request's (a HEAD response has no body).
pub(crate) fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, WireError> {
    // Where each header's name and value lie in `buf`, to cut them out of the frozen head.
    let mut spans: [Span; MAX_HEADERS] = [(0, 0, 0, 0); MAX_HEADERS];
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let (len, count, code, minor) = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut headers)
    {
        Ok(httparse::Status::Complete(len)) => {
            note_spans(buf, res.headers, &mut spans);
            let code = res.code.unwrap_or(0);
            (len, res.headers.len(), code, res.version.unwrap_or(1))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(WireError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(WireError::Parse(e)),
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| WireError::Status(code))?;
    let mut map = HeaderMap::with_capacity(count);
    // The framing headers are noted on the way (a name compare each), not looked up after.
    let mut seen = Seen::default();
    for &(n0, n1, v0, v1) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[n0 as usize..n1 as usize])
            .map_err(|_| WireError::HeaderName)?;
        // SAFETY: httparse accepted the value's bytes, by the rule `HeaderValue` checks (HTAB,
        // and bytes from SP on but DEL); hyper builds its values the same way.
        let value = unsafe {
            HeaderValue::from_maybe_shared_unchecked(head.slice(v0 as usize..v1 as usize))
        };
        seen.note(&name, &value)?;
        map.append(name, value);
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let framing = seen.framing(status, method);
    let keep_alive = framing != Framing::Close
        && if version == Version::HTTP_10 {
            seen.keep_alive
        } else {
            !seen.close
        };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = map;
    Ok(Some(Head {
        response,
        framing,
        keep_alive,
    }))
}

/// What a response's headers say of its framing and its connection.
#[derive(Default)]
struct Seen {
    /// Whether the last transfer coding is `chunked`, if there is one.
    chunked: Option<bool>,
    content_length: Option<u64>,
    close: bool,
    keep_alive: bool,
}

impl Seen {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), WireError> {
        let v = value.as_bytes();
        if name == TRANSFER_ENCODING {
            let last = v.rsplit(|b| *b == b',').next().unwrap_or_default();
            self.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == CONTENT_LENGTH {
            // Several values, or a list, must agree.
            for part in v.split(|b| *b == b',') {
                let n = decimal(part).ok_or(WireError::ContentLength)?;
                if self.content_length.is_some_and(|c| c != n) {
                    return Err(WireError::ContentLength);
                }
                self.content_length = Some(n);
            }
        } else if name == CONNECTION {
            for token in list(v) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }

    /// RFC 9112 §6.3: no body for HEAD, 1xx, 204, 304; chunked only as the final coding (any
    /// other coding runs to the close, and overrides a length); else the length, else the close.
    fn framing(&self, status: StatusCode, method: &Method) -> Framing {
        if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Framing::Empty;
        }
        match (self.chunked, self.content_length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
        }
    }
}

/// The bytes of a body of known length small enough to go out with its head in one write.
pub(crate) const INLINE_BODY: usize = 16 * 1024;

/// The bytes that end a chunked body (no trailers).
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes one chunk's size line into `out`.
pub(crate) fn chunk_head(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(len >> (i * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
