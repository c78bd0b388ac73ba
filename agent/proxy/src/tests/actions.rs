//! Route actions: weights, redirect, direct response, rewrites, header operations.

use super::*;

use meshpath_model::l7::LoadBalancer::RoundRobin;

#[tokio::test]
async fn weights_hold_over_10000_requests() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let split = RouteAction::Route(vec![
        WeightedCluster::new(key("a"), 70),
        WeightedCluster::new(key("b"), 20),
        WeightedCluster::new(key("c"), 10),
    ]);
    let clusters = vec![
        (key("a"), cluster(&[a.addr], RoundRobin)),
        (key("b"), cluster(&[b.addr], RoundRobin)),
        (key("c"), cluster(&[c.addr], RoundRobin)),
    ];
    let h = Arc::new(start(config(vec![route(vec![], split)], clusters)).await);
    // 8 concurrent clients, 1250 requests each.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                for _ in 0..1250 {
                    assert_eq!(h.get("/").await.status, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (na, nb, nc) = (a.count(), b.count(), c.count());
    assert_eq!(na + nb + nc, 10_000);
    // ±5 standard deviations of a binomial: a 1-in-a-million flake at worst.
    assert!((6770..=7230).contains(&na), "a got {na}");
    assert!((1800..=2200).contains(&nb), "b got {nb}");
    assert!((850..=1150).contains(&nc), "c got {nc}");
}

#[tokio::test]
async fn redirects_build_the_location_like_envoy() {
    let a = backend("a").await;
    let cases: Vec<(Redirect, &str, &str, &str)> = vec![
        // (redirect, request path, request host, expected Location)
        (
            Redirect {
                protocol_default_port: false,
                uri: Some("/new".into()),
                authority: None,
                scheme: None,
                port: None,
                status: 301,
            },
            "/old?x=1",
            "svc.default",
            "http://svc.default/new?x=1",
        ),
        (
            Redirect {
                protocol_default_port: false,
                uri: None,
                authority: Some("other.ns".into()),
                scheme: None,
                port: None,
                status: 302,
            },
            "/p",
            "svc.default:8080",
            "http://other.ns/p",
        ),
        (
            Redirect {
                protocol_default_port: false,
                uri: Some("/q?y=2".into()),
                authority: None,
                scheme: Some("https".into()),
                port: None,
                status: 301,
            },
            "/p?x=1",
            "svc:80",
            "https://svc/q?y=2",
        ),
        (
            Redirect {
                protocol_default_port: false,
                uri: None,
                authority: None,
                scheme: None,
                port: Some(9090),
                status: 308,
            },
            "/p",
            "svc:8080",
            "http://svc:9090/p",
        ),
        (
            Redirect {
                protocol_default_port: false,
                uri: None,
                authority: None,
                scheme: Some("https".into()),
                port: Some(443),
                status: 0,
            },
            "/p",
            "svc:8080",
            "https://svc:8080/p",
        ),
    ];
    let h = start(config(
        vec![],
        vec![(key("svc"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    for (r, path, host, location) in cases {
        let status = if r.status == 0 { 301 } else { r.status };
        let mut rt = route(vec![], RouteAction::Redirect(r));
        rt.response_headers
            .set
            .push(("x-route".into(), "redirect".into()));
        h.tx.send(Arc::new(config(vec![rt], vec![]))).unwrap();
        let got = h.get_with(path, &[("host", host)]).await;
        assert_eq!(got.status, status);
        assert_eq!(got.header("location"), Some(location));
        assert_eq!(got.header("x-route"), Some("redirect"));
        assert_eq!(got.body, "");
    }
    assert_eq!(a.count(), 0);
}

#[tokio::test]
async fn direct_response() {
    let body = RouteAction::DirectResponse {
        status: 418,
        body: Some(b"short and stout"[..].into()),
    };
    let h = start(config(vec![route(vec![], body)], vec![])).await;
    let got = h.get("/").await;
    assert_eq!((got.status, got.body.as_str()), (418, "short and stout"));
    assert_eq!(got.header("content-type"), Some("text/plain"));
    h.tx.send(Arc::new(config(
        vec![route(
            vec![],
            RouteAction::DirectResponse {
                status: 204,
                body: None,
            },
        )],
        vec![],
    )))
    .unwrap();
    let got = h.get("/").await;
    assert_eq!(
        (got.status, got.body.as_str(), got.header("content-type")),
        (204, "", None)
    );
}

#[tokio::test]
async fn rewrites_follow_envoy_prefix_semantics() {
    let a = backend("a").await;
    let h = start(config(vec![], vec![])).await;
    let cases = [
        // (match, rewrite, request, path upstream)
        (
            Some(prefix("/api/")),
            "/v2/",
            "/api/users?id=1",
            "/v2/users?id=1",
        ),
        (Some(prefix("/API")), "/x", "/api/users", "/x/users"),
        (Some(exact("/old")), "/new", "/old?q", "/new?q"),
        (Some(regex("/r/[0-9]+")), "/fixed", "/r/42", "/fixed"),
        // No uri condition: Istio matches prefix "/", so only the leading "/" is replaced.
        (None, "/base/", "/page", "/base/page"),
    ];
    for (m, rewrite, path, upstream) in cases {
        let mut r = route(
            vec![HttpMatch {
                uri: m,
                ignore_uri_case: true,
                ..HttpMatch::default()
            }],
            to(&key("a")),
        );
        r.rewrite = Some(Rewrite {
            uri_regex: None,
            uri: Some(rewrite.into()),
            authority: Some("rewritten.host".into()),
        });
        h.tx.send(Arc::new(config(
            vec![r],
            vec![(key("a"), cluster(&[a.addr], RoundRobin))],
        )))
        .unwrap();
        assert_eq!(h.get(path).await.status, 200);
        let seen = a.last();
        assert_eq!(seen.uri, upstream, "rewrite of {path}");
        assert_eq!(seen.host(), "rewritten.host");
    }
}

#[tokio::test]
async fn header_operations_and_upstream_service_time() {
    let a = backend("a").await;
    let mut r = route(vec![], to(&key("a")));
    r.request_headers = HeaderOps {
        set: vec![("x-set".into(), "new".into())],
        add: vec![("x-add".into(), "2".into())],
        remove: vec!["x-remove".into()],
    };
    r.response_headers = HeaderOps {
        set: vec![("x-backend".into(), "hidden".into())],
        add: vec![("x-extra".into(), "yes".into())],
        remove: vec![],
    };
    let h = start(config(
        vec![r],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    let got = h
        .get_with(
            "/",
            &[
                ("x-set", "old"),
                ("x-add", "1"),
                ("x-remove", "gone"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "1"),
            ],
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-backend"), Some("hidden"));
    assert_eq!(got.header("x-extra"), Some("yes"));
    let ms: u64 = got
        .header("x-envoy-upstream-service-time")
        .expect("service time")
        .parse()
        .unwrap();
    assert!(ms < 1000);
    let seen = a.last();
    assert_eq!(seen.header("x-set"), Some("new"));
    let adds: Vec<_> = seen
        .headers
        .get_all("x-add")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(adds, ["1", "2"]);
    assert_eq!(seen.header("x-remove"), None);
    // Hop-by-hop headers stop at the proxy.
    assert_eq!(seen.header("x-hop"), None);
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-envoy-attempt-count"), Some("1"));
    assert_eq!(seen.host(), "svc.default");
}

#[tokio::test]
async fn websocket_upgrades_are_tunnelled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw upstream that accepts the upgrade and then echoes bytes.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n").await.unwrap();
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
    });
    let h = start(config(
        vec![],
        vec![(key("svc"), cluster(&[up_addr], RoundRobin))],
    ))
    .await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nhost: svc\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "proxy closed: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    c.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    c.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = backend("b").await;
    let h = start(config(
        vec![],
        vec![(key("svc"), cluster(&[b.addr], RoundRobin))],
    ))
    .await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(b.count(), 1);
}
