//! `corsPolicy` through the proxy: preflights answered without reaching the service, grants
//! on actual responses, unmatched preflights forwarded or answered as configured.

use super::*;

use meshpath_model::l7::LoadBalancer::RoundRobin;

fn with_cors(forward_unmatched: bool) -> HttpRoute {
    let mut r = route(vec![], to(&key("a")));
    r.cors = Some(CorsPolicy {
        allow_origins: vec![exact("https://app.example"), prefix("https://dev.")],
        allow_methods: "GET,PUT".into(),
        allow_headers: "x-token".into(),
        expose_headers: "x-backend".into(),
        max_age: Some(600),
        allow_credentials: true,
        forward_unmatched_preflights: forward_unmatched,
    });
    r
}

async fn preflight(h: &Harness, origin: &str) -> Got {
    let req = Request::options("/things")
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "x-token")
        .body(Bytes::new())
        .unwrap();
    h.send(req).await
}

#[tokio::test]
async fn an_allowed_preflight_is_answered_by_the_proxy() {
    let a = backend("a").await;
    let h = start(config(
        vec![with_cors(true)],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    let got = preflight(&h, "https://dev.team").await;
    assert_eq!((got.status, got.body.as_str()), (200, ""));
    assert_eq!(
        got.header("access-control-allow-origin"),
        Some("https://dev.team")
    );
    assert_eq!(got.header("access-control-allow-methods"), Some("GET,PUT"));
    assert_eq!(got.header("access-control-allow-headers"), Some("x-token"));
    assert_eq!(got.header("access-control-max-age"), Some("600"));
    assert_eq!(got.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(a.count(), 0, "the service never saw the preflight");

    let got = h
        .get_with("/things", &[("origin", "https://app.example")])
        .await;
    assert_eq!((got.status, got.body.as_str()), (200, "a"));
    assert_eq!(
        got.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        got.header("access-control-expose-headers"),
        Some("x-backend")
    );
    assert_eq!(got.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(a.count(), 1);

    // Not allowed: no grant, and the service answers as it would anyway.
    let got = h
        .get_with("/things", &[("origin", "https://evil.example")])
        .await;
    assert_eq!((got.status, got.body.as_str()), (200, "a"));
    assert_eq!(got.header("access-control-allow-origin"), None);
    let got = h.get("/things").await;
    assert_eq!(got.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn an_unmatched_preflight_is_forwarded_unless_ignored() {
    let a = backend("a").await;
    let clusters = || vec![(key("a"), cluster(&[a.addr], RoundRobin))];
    let h = start(config(vec![with_cors(true)], clusters())).await;
    let got = preflight(&h, "https://evil.example").await;
    assert_eq!((got.status, got.body.as_str()), (200, "a"), "forwarded");
    assert_eq!(got.header("access-control-allow-origin"), None);
    assert_eq!(a.count(), 1);

    let h = start(config(vec![with_cors(false)], clusters())).await;
    let got = preflight(&h, "https://evil.example").await;
    assert_eq!((got.status, got.body.as_str()), (200, ""), "answered here");
    assert_eq!(got.header("access-control-allow-origin"), None);
    assert_eq!(got.header("access-control-allow-methods"), Some("GET,PUT"));
    assert_eq!(a.count(), 1);
}

#[tokio::test]
async fn faults_apply_before_cors() {
    // Istio's filter chain has fault injection before CORS: an abort answers preflights too,
    // and its local reply never passes the CORS filter, so it carries no grant.
    let a = backend("a").await;
    let mut r = with_cors(true);
    r.fault = Some(Fault {
        delay: None,
        abort: Some((meshpath_model::l7::Abort::Http(503), 100.0)),
    });
    let h = start(config(
        vec![r],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    let got = h.get_with("/", &[("origin", "https://app.example")]).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("access-control-allow-origin"), None);
    assert_eq!(preflight(&h, "https://app.example").await.status, 503);
    assert_eq!(a.count(), 0);
}
