//! A whole upstream response read from bytes that arrive in pieces, by the same steps the
//! client takes on a socket (head, `1xx` skipped, body by its framing), for the fuzz target
//! and the tests: no socket, no task.

use bytes::BytesMut;
use http::{HeaderMap, Method, Response};

use super::chunked::{Chunked, Step};
use super::error::WireError;
use super::wire::{self, Framing};

/// What a client would have got: the final head, the body, the trailers, and whether the
/// connection could carry another request.
#[derive(Debug)]
pub struct Decoded {
    pub response: Response<()>,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
    pub reusable: bool,
}

/// Reads one response from `wire` delivered in pieces ending at `cuts` (then the rest);
/// `None` when the bytes end before the response does (a close mid-response: an error for
/// every framing but a close-delimited body).
pub fn read(wire: &[u8], method: &Method, cuts: &[usize]) -> Result<Option<Decoded>, WireError> {
    let mut pieces = cuts
        .iter()
        .copied()
        .filter(|c| *c <= wire.len())
        .chain([wire.len()]);
    let mut at = 0;
    let mut buf = BytesMut::new();
    let mut next = |buf: &mut BytesMut| match pieces.next() {
        Some(end) if end >= at => {
            buf.extend_from_slice(&wire[at..end]);
            at = end;
            true
        }
        Some(_) => true,
        None => false,
    };
    let head = loop {
        match wire::parse_head(&mut buf, method)? {
            Some(h) if h.response.status().is_informational() && h.response.status() != 101 => {}
            Some(h) => break h,
            None if !next(&mut buf) => return Ok(None),
            None => {}
        }
    };
    let mut body = Vec::new();
    let mut trailers = None;
    match head.framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            while (buf.len() as u64) < n {
                if !next(&mut buf) {
                    return Ok(None);
                }
            }
            body.extend_from_slice(&buf.split_to(n as usize));
        }
        Framing::Chunked => {
            let mut dec = Chunked::default();
            loop {
                match dec.step(&mut buf)? {
                    Step::Data(d) => body.extend_from_slice(&d),
                    Step::End(t) => {
                        trailers = t;
                        break;
                    }
                    Step::More if !next(&mut buf) => return Ok(None),
                    Step::More => {}
                }
            }
        }
        Framing::Close => {
            while next(&mut buf) {}
            body.extend_from_slice(&buf.split());
        }
    }
    // Bytes after the response: the client would not reuse the connection.
    while next(&mut buf) {}
    let reusable = head.keep_alive && buf.is_empty();
    Ok(Some(Decoded {
        response: head.response,
        body,
        trailers,
        reusable,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_reads_the_same_however_it_is_cut() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\nx-t: 1\r\n\r\n";
        for cut in 0..=wire.len() {
            let d = read(wire, &Method::GET, &[cut]).unwrap().unwrap();
            assert_eq!(d.response.status(), 200);
            assert_eq!(d.body, b"abcdef", "cut at {cut}");
            assert_eq!(d.trailers.unwrap()["x-t"], "1");
            assert!(d.reusable);
        }
    }

    #[test]
    fn a_short_body_is_no_response() {
        let wire = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort";
        assert!(read(wire, &Method::GET, &[]).unwrap().is_none());
        let closed = b"HTTP/1.0 200 OK\r\n\r\nto the end";
        let d = read(closed, &Method::GET, &[20]).unwrap().unwrap();
        assert_eq!((d.body.as_slice(), d.reusable), (&b"to the end"[..], false));
    }
}
