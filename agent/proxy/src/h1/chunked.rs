//! Decoding a chunked response body (RFC 9112 §7.1) from the connection's read buffer, one
//! step at a time: a step hands out what the buffer holds and asks for more when it needs it.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use super::error::WireError;
use super::wire::MAX_HEADERS;

/// The longest chunk-size line (size and extensions) and trailer section accepted.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Data(Bytes),
    /// The last chunk, with the trailer fields if any.
    End(Option<HeaderMap>),
    /// The buffer holds no complete next step.
    More,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) enum Chunked {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl Chunked {
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Result<Step, WireError> {
        loop {
            match *self {
                Chunked::Size => {
                    let Some(eol) = find_crlf(buf, MAX_LINE)? else {
                        return Ok(Step::More);
                    };
                    let size = chunk_size(&buf[..eol])?;
                    buf.advance(eol + 2);
                    *self = if size == 0 {
                        Chunked::Trailers
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = left.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    *self = if n == left {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - n)
                    };
                    return Ok(Step::Data(data));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Chunk);
                    }
                    buf.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Chunked::Done;
                        return Ok(Step::End(None));
                    }
                    let Some(end) = find(buf, b"\r\n\r\n", MAX_TRAILERS)? else {
                        return Ok(Step::More);
                    };
                    let trailers = parse_trailers(&buf[..end + 4])?;
                    buf.advance(end + 4);
                    *self = Chunked::Done;
                    return Ok(Step::End(Some(trailers)));
                }
                Chunked::Done => return Ok(Step::End(None)),
            }
        }
    }
}

fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, WireError> {
    find(buf, b"\r\n", limit)
}

fn find(buf: &[u8], needle: &[u8], limit: usize) -> Result<Option<usize>, WireError> {
    match buf.windows(needle.len()).position(|w| w == needle) {
        Some(i) => Ok(Some(i)),
        None if buf.len() > limit => Err(WireError::Chunk),
        None => Ok(None),
    }
}

/// The hex size before any `;` extension, whitespace allowed around it.
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(WireError::Chunk);
    }
    digits.iter().try_fold(0u64, |n, d| {
        let v = (*d as char).to_digit(16).ok_or(WireError::Chunk)?;
        Ok(n << 4 | u64::from(v))
    })
}

fn parse_trailers(section: &[u8]) -> Result<HeaderMap, WireError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        Ok(httparse::Status::Partial) => return Err(WireError::Chunk),
        Err(e) => return Err(WireError::Parse(e)),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for f in parsed {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| WireError::HeaderName)?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| WireError::Chunk)?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[&[u8]]) -> Result<(Vec<u8>, Option<HeaderMap>), WireError> {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for piece in input {
            buf.extend_from_slice(piece);
            loop {
                match dec.step(&mut buf)? {
                    Step::Data(d) => body.extend_from_slice(&d),
                    Step::End(t) => return Ok((body, t)),
                    Step::More => break,
                }
            }
        }
        Err(WireError::Chunk)
    }

    #[test]
    fn decodes_chunks_split_anywhere() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for cut in 0..wire.len() {
            let (a, b) = wire.split_at(cut);
            let (body, trailers) = all(&[a, b]).unwrap();
            assert_eq!(body, b"hello, world", "cut at {cut}");
            assert!(trailers.is_none());
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(all(&bytes).unwrap().0, b"hello, world");
    }

    #[test]
    fn hands_out_trailers() {
        let (body, trailers) =
            all(&[b"A\r\n0123456789\r\n0\r\nx-checksum: abc\r\nx-n: 1\r\n\r\n"]).unwrap();
        assert_eq!(body, b"0123456789");
        let t = trailers.unwrap();
        assert_eq!(t["x-checksum"], "abc");
        assert_eq!(t["x-n"], "1");
    }

    #[test]
    fn leaves_the_next_response_in_the_buffer() {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::from(&b"1\r\na\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"[..]);
        assert_eq!(
            dec.step(&mut buf).unwrap(),
            Step::Data(Bytes::from_static(b"a"))
        );
        assert_eq!(dec.step(&mut buf).unwrap(), Step::End(None));
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
    }

    #[test]
    fn rejects_bad_sizes_and_framing() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            assert!(all(&[bad]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let endless = vec![b'1'; MAX_LINE + 10];
        assert!(all(&[&endless]).is_err());
    }
}
