//! Arbitrary HTTP/1 request heads (and their HTTP/2 form) through the proxy's request path
//! against a fixed routing table that uses every match kind, rewrites, header operations,
//! redirects, direct responses, consistent hashing and retries (`routes.yaml`, compiled as the
//! agent compiles it). The last two bytes are an upstream status to decide a retry on. Heads the
//! proxy's own HTTP/1.1 server takes are checked to parse as hyper parses them.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshpath_proxy::fuzzing::Routes;

static ROUTES: OnceLock<Routes> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let routes = ROUTES.get_or_init(|| {
        let model = meshpath_fuzz::model(include_str!("../routes.yaml")).expect("routes.yaml");
        let (routes, errors) = meshpath_fuzz::routes(&model);
        assert_eq!(
            errors,
            Vec::<String>::new(),
            "routes.yaml must compile cleanly"
        );
        assert_eq!(
            routes.listeners().len(),
            2,
            "routes.yaml has two HTTP services"
        );
        routes
    });
    let (status, data) = match data {
        [rest @ .., a, b] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return,
    };
    // A head the proxy's own HTTP/1.1 server takes must read as hyper would read it.
    if let Some(own) = meshpath_proxy::fuzzing::own_server_head(data) {
        let reference = meshpath_fuzz::head(data).expect("a head the own server took parses");
        assert_eq!(own.method, reference.method);
        assert_eq!(own.uri, reference.uri);
        assert_eq!(own.version, reference.version);
        assert_eq!(own.headers, reference.headers);
    }
    let Some(head) = meshpath_fuzz::head(data) else {
        return;
    };
    meshpath_fuzz::route_everywhere(routes, &head, status);
});
