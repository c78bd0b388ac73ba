//! The route fields the proxy enforces beyond plain routing: each is converted, with no
//! "not enforced" warning.

use meshpath_model::ObjectRef;

use super::super::model::*;
use super::vs_with;

fn convert(http: &str) -> VirtualService {
    let value = serde_saphyr::from_str::<serde_json::Value>(&vs_with(http)).expect("yaml");
    let (vs, warnings) = super::super::virtual_service(value).expect("valid");
    assert_eq!(warnings, [], "no warnings expected");
    vs
}

#[test]
fn mirrors_each_with_its_percentage_after_mirror() {
    let vs = convert(
        "  - route:\n    - destination: {host: r}\n    mirrors:\n    - destination: {host: a}\n      percentage: {value: 25}\n    - destination: {host: b, subset: v2}\n",
    );
    let got: Vec<(String, f64)> = vs.http[0]
        .mirrors
        .iter()
        .map(|m| (m.destination.host.clone(), m.percentage.0))
        .collect();
    assert_eq!(got, [("a".to_owned(), 25.0), ("b".to_owned(), 100.0)]);
}

#[test]
fn uri_regex_rewrite_is_unanchored_with_re2_groups() {
    let vs = convert(
        "  - rewrite:\n      uriRegexRewrite: {match: \"^/service/([^/]+)(/.*)$\", rewrite: \"\\\\2/instance/\\\\1$\"}\n    route:\n    - destination: {host: r}\n",
    );
    let rr = vs.http[0]
        .rewrite_uri_regex
        .as_ref()
        .expect("regex rewrite");
    assert_eq!(rr.substitution, "${2}/instance/${1}$$");
    let out = rr
        .pattern
        .regex
        .replace_all("/service/foo/v1/api", rr.substitution.as_str());
    assert_eq!(out, "/v1/api/instance/foo$");
    let vs = convert(
        "  - rewrite:\n      uriRegexRewrite: {match: \"a\", rewrite: \"b\"}\n    route:\n    - destination: {host: r}\n",
    );
    let rr = vs.http[0].rewrite_uri_regex.as_ref().unwrap();
    assert_eq!(
        rr.pattern
            .regex
            .replace_all("/aaa", rr.substitution.as_str()),
        "/bbb"
    );
}

#[test]
fn redirect_derive_port_direct_response_bytes_and_grpc_abort() {
    let vs = convert(
        "  - match:\n    - uri: {prefix: /a}\n    redirect: {uri: /b, derivePort: FROM_REQUEST_PORT, scheme: https, redirectCode: 308}\n  \
         - match:\n    - uri: {prefix: /c}\n    directResponse: {status: 418, body: {bytes: \"AAH/dGVh\"}}\n  \
         - fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}\n    route:\n    - destination: {host: r}\n",
    );
    match &vs.http[0].action {
        Action::Redirect(r) => {
            assert_eq!(r.derive_port, Some(DerivePort::FromRequestPort));
            assert_eq!((r.status, r.scheme.as_deref()), (308, Some("https")));
        }
        other => panic!("{other:?}"),
    }
    match &vs.http[1].action {
        Action::DirectResponse { status, body } => {
            assert_eq!(*status, 418);
            assert_eq!(body.as_deref(), Some(&b"\x00\x01\xfftea"[..]));
        }
        other => panic!("{other:?}"),
    }
    let abort = vs.http[2].fault.as_ref().and_then(|f| f.abort);
    assert_eq!(abort, Some((Abort::Grpc(14), Percent(100.0))));
}

#[test]
fn destination_and_route_header_operations() {
    let vs = convert(
        "  - headers:\n      request: {set: {x-route: \"1\"}}\n    route:\n    - destination: {host: r, subset: v1}\n      weight: 50\n      \
         headers:\n        request: {add: {x-dest: v1}}\n        response: {remove: [x-internal]}\n    - destination: {host: r, subset: v2}\n      weight: 50\n",
    );
    let r = &vs.http[0];
    assert_eq!(r.request_headers.set, [("x-route".into(), "1".into())]);
    assert_eq!(r.destination_headers.len(), 2);
    assert_eq!(
        r.destination_headers[0].request.add,
        [("x-dest".into(), "v1".into())]
    );
    assert_eq!(r.destination_headers[0].response.remove, ["x-internal"]);
    assert_eq!(r.destination_headers[1], DestinationHeaders::default());
}

#[test]
fn delegates_and_roots() {
    let root = convert(
        "  - match:\n    - uri: {prefix: /reviews}\n    delegate: {name: reviews, namespace: team}\n  - delegate: {name: local}\n",
    );
    assert_eq!(
        root.http[0].action,
        Action::Delegate(ObjectRef::new("team", "reviews"))
    );
    assert_eq!(
        root.http[1].action,
        Action::Delegate(ObjectRef::new("default", "local"))
    );
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  namespace: team\nspec:\n  http:\n  - match:\n    - uri: {prefix: /reviews/v2}\n    route:\n    - destination: {host: reviews}\n";
    let value = serde_saphyr::from_str::<serde_json::Value>(text).expect("yaml");
    let (delegate, warnings) = super::super::virtual_service(value).expect("valid");
    assert_eq!(warnings, []);
    assert!(delegate.hosts.is_empty());
    assert_eq!(delegate.http.len(), 1, "a delegate keeps its routes");
}
