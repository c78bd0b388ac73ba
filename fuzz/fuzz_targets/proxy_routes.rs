//! A routing table compiled from fuzzed YAML (Services, EndpointSlices, VirtualServices,
//! DestinationRules: what follows the first NUL byte is a request head) and a request through
//! it, as the proxy serves it.
#![no_main]

use libfuzzer_sys::fuzz_target;

const DEFAULT_HEAD: &[u8] =
    b"GET /productpage?u=1 HTTP/1.1\r\nHost: reviews\r\nend-user: jason\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let (yaml, head) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, DEFAULT_HEAD),
    };
    let Ok(yaml) = std::str::from_utf8(yaml) else {
        return;
    };
    let Some(model) = meshpath_fuzz::model(yaml) else {
        return;
    };
    let (routes, _) = meshpath_fuzz::routes(&model);
    if let Some(head) = meshpath_fuzz::head(head) {
        meshpath_fuzz::route_everywhere(&routes, &head, 503);
    }
});
