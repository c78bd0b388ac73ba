//! Arbitrary bytes as an upstream's HTTP/1 response, read the way the proxy's own client reads
//! a socket (response head, `1xx` skipped, body by content-length, chunked coding or close),
//! delivered in pieces. The first byte picks a HEAD request (low bit) and where the bytes are
//! cut. Whatever comes back must be consistent with the input: a body never longer than the
//! bytes after the head, a reusable connection only for a delimited body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpath_proxy::fuzzing::upstream_response;

fuzz_target!(|data: &[u8]| {
    let Some((&first, wire)) = data.split_first() else {
        return;
    };
    let head_request = first & 1 == 1;
    let cuts = [usize::from(first >> 1), wire.len() / 2];
    if let Ok(Some(d)) = upstream_response(wire, head_request, &cuts) {
        assert!(d.body.len() <= wire.len());
        if head_request {
            assert!(d.body.is_empty(), "a HEAD response has no body");
        }
        // The same bytes in one piece read the same.
        let whole = upstream_response(wire, head_request, &[])
            .expect("no error in one piece")
            .expect("complete in one piece");
        assert_eq!(whole.body, d.body);
        assert_eq!(whole.response.status(), d.response.status());
        assert_eq!(whole.reusable, d.reusable);
    }
});
