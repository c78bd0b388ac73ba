//! What the fuzz targets share: fuzz bytes as a request head, and YAML compiled into the proxy's
//! routing table the way the agent compiles a manifests directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use http::request::Parts;
use meshpath_compile::l7::{compile_l7, L7Compiled};
use meshpath_compile::{compile, CompileOptions, Compiled};
use meshpath_model::ClusterModel;
use meshpath_proxy::fuzzing::Routes;
use meshpath_source::parse_file;

/// An HTTP/1 request head parsed as hyper parses one (httparse, then the `http` types; what
/// either rejects hyper answers 400 and never routes; at most hyper's 100 headers). `None` for
/// such heads.
pub fn head(bytes: &[u8]) -> Option<Parts> {
    let mut raw = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut raw);
    req.parse(bytes).ok()?;
    let mut builder = http::Request::builder()
        .method(req.method?)
        .uri(req.path?)
        .version(if req.version? == 0 {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        });
    for h in req.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    Some(builder.body(()).ok()?.into_parts().0)
}

/// The same head as an HTTP/2 request (absolute URI from `Host`, no `Host` header).
pub fn h2(head: &Parts) -> Option<Parts> {
    let host = head.headers.get(http::header::HOST)?.to_str().ok()?;
    let uri = format!(
        "http://{host}{}",
        head.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut b = http::Request::builder()
        .method(head.method.clone())
        .uri(uri)
        .version(http::Version::HTTP_2);
    for (k, v) in head
        .headers
        .iter()
        .filter(|(k, _)| *k != http::header::HOST)
    {
        b = b.header(k, v);
    }
    Some(b.body(()).ok()?.into_parts().0)
}

/// The model of one manifest file's text, as the manifests source builds it (`None` when the
/// file has errors: the agent keeps the previous model then).
pub fn model(text: &str) -> Option<ClusterModel> {
    let mut m = ClusterModel::default();
    for object in parse_file(Path::new("fuzz.yaml"), text).ok()? {
        object.insert_into(&mut m);
    }
    Some(m)
}

/// The proxy's routing table for `model`, compiled as the agent compiles it, and the
/// compilers' errors.
pub fn routes(model: &ClusterModel) -> (Routes, Vec<String>) {
    let (compiled, errors) = compile(model, &CompileOptions::default(), &Compiled::default());
    let (l7, l7_errors) = compile_l7(model, &compiled, &L7Compiled::default());
    let errors = errors
        .iter()
        .map(ToString::to_string)
        .chain(l7_errors.iter().map(ToString::to_string))
        .collect();
    (Routes::new(l7.config), errors)
}

/// `head` (and its HTTP/2 form) to every listener of `routes`, with an upstream answer of
/// `status` to decide a retry on.
pub fn route_everywhere(routes: &Routes, head: &Parts, status: u16) {
    let peer: SocketAddr = ([10, 0, 0, 7], 40000).into();
    let labels: BTreeMap<String, String> = [("app".to_owned(), "productpage".to_owned())].into();
    let h2 = h2(head);
    for dst in routes.listeners() {
        // A client of the services' namespace, and one of another (`exportTo`).
        for ns in [Some("default"), Some("elsewhere")] {
            routes.request(dst, peer, &labels, ns, clone_head(head), status);
            if let Some(h2) = &h2 {
                routes.request(dst, peer, &labels, ns, clone_head(h2), status);
            }
        }
    }
}

fn clone_head(head: &Parts) -> Parts {
    let mut b = http::Request::builder()
        .method(head.method.clone())
        .uri(head.uri.clone())
        .version(head.version);
    for (k, v) in &head.headers {
        b = b.header(k, v);
    }
    b.body(()).expect("a head that was valid").into_parts().0
}
