//! Route selection: order, every match kind, and what happens without a route.

use super::*;

use meshpath_model::l7::LoadBalancer::RoundRobin;

pub(super) fn two_backends(a: &Backend, b: &Backend) -> Vec<(ClusterKey, Cluster)> {
    vec![
        (key("a"), cluster(&[a.addr], RoundRobin)),
        (key("b"), cluster(&[b.addr], RoundRobin)),
    ]
}

#[tokio::test]
async fn first_matching_route_wins_in_order() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let m = |p: &str| {
        vec![HttpMatch {
            uri: Some(prefix(p)),
            ..HttpMatch::default()
        }]
    };
    let routes = vec![
        route(m("/api/v2"), to(&key("a"))),
        route(m("/api"), to(&key("b"))),
        route(vec![], to(&key("c"))),
    ];
    let mut clusters = two_backends(&a, &b);
    clusters.push((key("c"), cluster(&[c.addr], RoundRobin)));
    let h = start(config(routes, clusters)).await;
    assert_eq!(h.get("/api/v2/x").await.body, "a");
    assert_eq!(h.get("/api/v1").await.body, "b");
    assert_eq!(h.get("/other").await.body, "c");
}

/// Swaps in `[m → a, catch-all → b]` and tells whether `req` went to `a`.
pub(super) async fn hits(
    h: &Harness,
    a: &Backend,
    b: &Backend,
    matches: Vec<HttpMatch>,
    req: Request<Bytes>,
) -> bool {
    let routes = vec![route(matches, to(&key("a"))), route(vec![], to(&key("b")))];
    h.tx.send(Arc::new(config(routes, two_backends(a, b))))
        .unwrap();
    let got = h.send(req).await;
    assert_eq!(got.status, 200, "{got:?}");
    got.body == "a"
}

pub(super) fn get(path: &str, headers: &[(&str, &str)]) -> Request<Bytes> {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Bytes::new()).unwrap()
}

pub(super) fn one(m: HttpMatch) -> Vec<HttpMatch> {
    vec![m]
}

#[tokio::test]
async fn uri_method_authority_scheme_matches() {
    let (a, b) = (backend("a").await, backend("b").await);
    let h = start(config(vec![], two_backends(&a, &b))).await;
    let uri = |s: StringMatch, ignore: bool| {
        one(HttpMatch {
            uri: Some(s),
            ignore_uri_case: ignore,
            ..HttpMatch::default()
        })
    };
    // Exact ignores the query string; prefix and regex are on the path only; regex is a full match.
    assert!(
        hits(
            &h,
            &a,
            &b,
            uri(exact("/exact"), false),
            get("/exact?q=1", &[])
        )
        .await
    );
    assert!(
        !hits(
            &h,
            &a,
            &b,
            uri(exact("/exact"), false),
            get("/exact/more", &[])
        )
        .await
    );
    assert!(hits(&h, &a, &b, uri(prefix("/pre"), false), get("/prefix", &[])).await);
    assert!(!hits(&h, &a, &b, uri(prefix("/pre"), false), get("/other", &[])).await);
    assert!(
        hits(
            &h,
            &a,
            &b,
            uri(regex("/items/[0-9]+"), false),
            get("/items/42", &[])
        )
        .await
    );
    assert!(
        !hits(
            &h,
            &a,
            &b,
            uri(regex("/items/[0-9]+"), false),
            get("/items/42/x", &[])
        )
        .await
    );
    assert!(
        !hits(
            &h,
            &a,
            &b,
            uri(regex("[0-9]+"), false),
            get("/items/42", &[])
        )
        .await
    );
    assert!(hits(&h, &a, &b, uri(exact("/Case"), true), get("/cASE", &[])).await);
    assert!(!hits(&h, &a, &b, uri(exact("/Case"), false), get("/cASE", &[])).await);
    assert!(hits(&h, &a, &b, uri(prefix("/ABC"), true), get("/abcdef", &[])).await);

    let method = |s| {
        one(HttpMatch {
            method: Some(s),
            ..HttpMatch::default()
        })
    };
    let post = Request::post("/").body(Bytes::from_static(b"x")).unwrap();
    assert!(hits(&h, &a, &b, method(exact("POST")), post).await);
    assert!(!hits(&h, &a, &b, method(exact("POST")), get("/", &[])).await);

    let authority = |s| {
        one(HttpMatch {
            authority: Some(s),
            ..HttpMatch::default()
        })
    };
    assert!(hits(&h, &a, &b, authority(prefix("svc")), get("/", &[])).await);
    assert!(
        hits(
            &h,
            &a,
            &b,
            authority(regex(r"svc\.default(:80)?")),
            get("/", &[("host", "svc.default:80")])
        )
        .await
    );
    assert!(
        !hits(
            &h,
            &a,
            &b,
            authority(exact("svc")),
            get("/", &[("host", "other")])
        )
        .await
    );

    let scheme = |s| {
        one(HttpMatch {
            scheme: Some(s),
            ..HttpMatch::default()
        })
    };
    assert!(hits(&h, &a, &b, scheme(exact("http")), get("/", &[])).await);
    assert!(!hits(&h, &a, &b, scheme(exact("https")), get("/", &[])).await);
}

#[tokio::test]
async fn source_labels_come_from_the_connection() {
    let (a, b) = (backend("a").await, backend("b").await);
    let m = |app: &str| {
        vec![HttpMatch {
            source_labels: [("app".to_owned(), app.to_owned())].into(),
            ..HttpMatch::default()
        }]
    };
    let routes = vec![
        route(m("backend"), to(&key("b"))),
        route(m("frontend"), to(&key("a"))),
        route(vec![], to(&key("b"))),
    ];
    let labels = [
        ("app".to_owned(), "frontend".to_owned()),
        ("version".to_owned(), "v1".to_owned()),
    ]
    .into();
    let h = start_with(
        config(routes, two_backends(&a, &b)),
        FixedDst {
            dst: Some(VIP),
            labels,
        },
        None,
    )
    .await;
    assert_eq!(h.get("/").await.body, "a");
}

#[tokio::test]
async fn without_a_route() {
    let (a, b) = (backend("a").await, backend("svc").await);
    let only_api = vec![route(
        vec![HttpMatch {
            uri: Some(prefix("/api")),
            ..HttpMatch::default()
        }],
        to(&key("a")),
    )];
    let mut clusters = two_backends(&a, &a);
    clusters.push((key("svc"), cluster(&[b.addr], RoundRobin)));
    let h = start(config(only_api, clusters.clone())).await;
    // Routes exist but none matches: Envoy's 404, empty body.
    let got = h.get("/web").await;
    assert_eq!((got.status, got.body.as_str()), (404, ""));
    // No routes: the service itself.
    h.tx.send(Arc::new(config(vec![], clusters.clone())))
        .unwrap();
    assert_eq!(h.get("/web").await.body, "svc");
    // A destination the config does not define: 503 (cluster not found).
    h.tx.send(Arc::new(config(
        vec![route(vec![], to(&key("ghost")))],
        clusters,
    )))
    .unwrap();
    let got = h.get("/").await;
    assert_eq!((got.status, got.body.as_str()), (503, ""));
}

#[tokio::test]
async fn unknown_destinations() {
    let direct = backend("direct").await;
    // An original destination without L7 config: passthrough to it.
    let h = start_with(
        config(vec![], vec![]),
        FixedDst {
            dst: Some(direct.addr),
            labels: BTreeMap::new(),
        },
        None,
    )
    .await;
    let got = h.get("/x").await;
    assert_eq!((got.status, got.body.as_str()), (200, "direct"));
    assert_eq!(direct.last().uri, "/x");
    // No original destination at all: nothing to route on.
    let h = start_with(
        config(vec![], vec![]),
        FixedDst {
            dst: None,
            labels: BTreeMap::new(),
        },
        None,
    )
    .await;
    assert_eq!(h.get("/x").await.status, 404);
}

#[tokio::test]
async fn h2c_clients_are_served_over_h2() {
    let (a, b) = (backend("a").await, backend("b").await);
    let routes = vec![route(
        vec![HttpMatch {
            uri: Some(prefix("/grpc")),
            ..HttpMatch::default()
        }],
        to(&key("a")),
    )];
    let h = start(config(routes, two_backends(&a, &b))).await;
    let req = Request::post("/grpc/Svc/Method")
        .version(Version::HTTP_2)
        .header("te", "trailers")
        .body(Bytes::from_static(b"hello"))
        .unwrap();
    let got = h.send(req).await;
    assert_eq!((got.status, got.body.as_str()), (200, "a"));
    let seen = a.last();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(&seen.body[..], b"hello");
    assert_eq!(seen.header("te"), Some("trailers"));
}
