//! Through the proxy: `route[].headers` with the route's own, several mirrors, regex rewrite,
//! a binary direct response, `derivePort` redirects and gRPC fault aborts.

use super::*;

use crate::layers::testing::eventually;
use meshpath_model::l7::LoadBalancer::RoundRobin;

fn ops(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderOps {
    let pairs = |l: &[(&str, &str)]| {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    HeaderOps {
        set: pairs(set),
        add: pairs(add),
        remove: remove.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn destination_headers_apply_before_the_routes_own() {
    let (a, b) = (backend("a").await, backend("b").await);
    let mut wa = WeightedCluster::new(key("a"), 100);
    wa.request_headers = ops(&[("x-dest", "a"), ("x-both", "dest")], &[], &["x-drop"]);
    wa.response_headers = ops(&[("x-resp-dest", "a")], &[], &[]);
    let wb = WeightedCluster::new(key("b"), 0);
    let mut r = route(vec![], RouteAction::Route(vec![wa, wb]));
    r.request_headers = ops(&[("x-both", "route")], &[("x-route", "1")], &[]);
    r.response_headers = ops(&[], &[("x-resp-route", "1")], &[]);
    let h = start(config(
        vec![r],
        vec![
            (key("a"), cluster(&[a.addr], RoundRobin)),
            (key("b"), cluster(&[b.addr], RoundRobin)),
        ],
    ))
    .await;
    let got = h
        .get_with("/", &[("x-drop", "1"), ("x-both", "client")])
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-resp-dest"), Some("a"));
    assert_eq!(got.header("x-resp-route"), Some("1"));
    let seen = a.last();
    assert_eq!(seen.header("x-dest"), Some("a"));
    assert_eq!(seen.header("x-drop"), None);
    assert_eq!(seen.header("x-route"), Some("1"));
    // Envoy: the less specific (route) set is applied last and wins.
    assert_eq!(seen.header("x-both"), Some("route"));
    assert_eq!(b.count(), 0);
}

#[tokio::test]
async fn every_mirror_gets_its_copy() {
    let (a, m1, m2) = (backend("a").await, backend("m1").await, backend("m2").await);
    let mut r = route(vec![], to(&key("a")));
    r.mirrors = vec![
        Mirror {
            cluster: key("m1"),
            percentage: 100.0,
        },
        Mirror {
            cluster: key("m2"),
            percentage: 100.0,
        },
    ];
    let h = start(config(
        vec![r],
        vec![
            (key("a"), cluster(&[a.addr], RoundRobin)),
            (key("m1"), cluster(&[m1.addr], RoundRobin)),
            (key("m2"), cluster(&[m2.addr], RoundRobin)),
        ],
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(h.get("/x").await.body, "a");
    }
    let copies = || (m1.count(), m2.count());
    assert!(eventually(|| copies() == (5, 5)).await, "{:?}", copies());
    assert_eq!(m2.last().host(), "svc.default-shadow");
}

#[tokio::test]
async fn regex_rewrite_reaches_the_upstream() {
    let a = backend("a").await;
    let mut r = route(vec![], to(&key("a")));
    r.rewrite = Some(Rewrite {
        uri_regex: Some((
            Arc::new(regex::Regex::new("^/service/([^/]+)(/.*)$").unwrap()),
            "${2}/instance/${1}".into(),
        )),
        ..Rewrite::default()
    });
    let h = start(config(
        vec![r],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    assert_eq!(h.get("/service/foo/v1/api?q=1").await.status, 200);
    assert_eq!(a.last().uri, "/v1/api/instance/foo?q=1");
}

#[tokio::test]
async fn binary_direct_response_and_protocol_default_redirect() {
    let direct = route(
        vec![HttpMatch {
            uri: Some(prefix("/bin")),
            ..HttpMatch::default()
        }],
        RouteAction::DirectResponse {
            status: 200,
            body: Some(b"\x00\x01\xfftea"[..].into()),
        },
    );
    let redirect = route(
        vec![],
        RouteAction::Redirect(Redirect {
            uri: None,
            authority: None,
            scheme: Some("https".into()),
            port: None,
            protocol_default_port: true,
            status: 302,
        }),
    );
    let h = start(config(vec![direct, redirect], vec![])).await;
    let got = h.get("/bin").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), Some("6"));
    assert!(got.body.ends_with("tea"));
    let got = h
        .send(
            Request::get("/page?a=1")
                .header("host", "svc.default:8080")
                .body(Bytes::new())
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, 302);
    assert_eq!(got.header("location"), Some("https://svc.default/page?a=1"));
}

#[tokio::test]
async fn grpc_abort_is_a_trailers_only_answer_for_grpc_requests() {
    let a = backend("a").await;
    let mut r = route(vec![], to(&key("a")));
    r.fault = Some(Fault {
        delay: None,
        abort: Some((Abort::Grpc(14), 100.0)),
    });
    let h = start(config(
        vec![r],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let got = h
            .send(
                Request::post("/pkg.Svc/Method")
                    .version(version)
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(Bytes::from_static(b"\0\0\0\0\0"))
                    .unwrap(),
            )
            .await;
        assert_eq!(got.status, 200, "{version:?}");
        assert_eq!(got.header("content-type"), Some("application/grpc"));
        assert_eq!(got.header("grpc-status"), Some("14"));
        assert_eq!(got.header("grpc-message"), Some("fault filter abort"));
        assert_eq!(got.body, "");
    }
    let plain = h.get("/").await;
    assert_eq!(
        (plain.status, plain.body.as_str()),
        (503, "fault filter abort")
    );
    assert_eq!(
        a.count(),
        0,
        "an aborted request never reaches the upstream"
    );
}
