//! Writing a response to an HTTP/1.1 client of the proxy's own server, framed as hyper's server
//! frames it: the headers as given, `content-length` when the body's length is known,
//! otherwise chunked; no body for HEAD, 204 and 304; a `date` header when there is none.

use std::cell::RefCell;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::wire::{chunk_head, decimal, list, put_decimal, Framing, INLINE_BODY, LAST_CHUNK};
use crate::body::ProxyBody;

/// Writes `resp` (its body as it comes) to `io`. `head_request`: the request was HEAD;
/// `close`: the client asked to close after it. `Ok(true)`: the connection can carry another
/// request; an error or `Ok(false)` ends it.
pub(crate) async fn write<W: AsyncWrite + Unpin>(
    io: &mut W,
    resp: Response<ProxyBody>,
    head_request: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    out.clear();
    let status = parts.status;
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let (mut length, mut chunked, mut date, mut says_close) = (None, false, false, false);
    for (name, value) in &parts.headers {
        let v = value.as_bytes();
        if name == CONTENT_LENGTH {
            length = decimal(v);
        } else if name == TRANSFER_ENCODING {
            chunked = true;
        } else if name == DATE {
            date = true;
        } else if name == CONNECTION {
            says_close |= list(v).any(|t| t.eq_ignore_ascii_case(b"close"));
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    let no_body = head_request
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational();
    let framing = if no_body {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if let Some(n) = http_body::Body::size_hint(&body).exact() {
        out.extend_from_slice(b"content-length: ");
        put_decimal(n, out);
        out.extend_from_slice(b"\r\n");
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if close && !says_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !date {
        out.extend_from_slice(b"date: ");
        with_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let keep_alive = !(close || says_close);
    if framing == Framing::Empty {
        drop(body); // as below
        io.write_all(out).await?;
        return Ok(keep_alive);
    }
    // The head goes out with the first piece of the body when that is small, and the whole
    // response in one write when the body is in hand (the usual case).
    let mut sent: u64 = 0;
    loop {
        let data = match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers: not sent
            },
            Some(Err(_)) => {
                // The upstream body broke: the client must not take what it got for a whole
                // response, so the connection ends (as hyper's server does).
                let _ = io.write_all(out).await;
                return Err(io::Error::other("response body failed"));
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if matches!(framing, Framing::Length(n) if sent > n) {
            return Err(io::Error::other(
                "response body longer than its content-length",
            ));
        }
        put(io, out, &data, framing == Framing::Chunked).await?;
        if !http_body::Body::is_end_stream(&body) {
            io.write_all(out).await?;
            out.clear();
        }
    }
    // Released before the last write: the request stops counting as active (and its upstream
    // connection is back in the pool) by the time the client has the whole response.
    drop(body);
    if framing == Framing::Chunked {
        out.extend_from_slice(LAST_CHUNK);
    }
    io.write_all(out).await?;
    if matches!(framing, Framing::Length(n) if sent != n) {
        return Err(io::Error::other(
            "response body shorter than its content-length",
        ));
    }
    Ok(keep_alive)
}

/// Appends one piece of the body to `out`, or writes `out` and then the piece when large.
async fn put<W: AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    data: &Bytes,
    chunked: bool,
) -> io::Result<()> {
    if chunked {
        chunk_head(data.len(), out);
    }
    if data.len() <= INLINE_BODY {
        out.extend_from_slice(data);
    } else {
        io.write_all(out).await?;
        out.clear();
        io.write_all(data).await?;
    }
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// The current `date` value, formatted once a second per thread (as hyper caches it).
fn with_date(f: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        f(text.as_bytes());
    });
}
