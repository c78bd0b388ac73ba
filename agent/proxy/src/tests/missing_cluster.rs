//! A route to a cluster the config does not define (a subset no DestinationRule defines yet):
//! Envoy's "cluster not found", 503 with flag `NC`, counted in `http.<prefix>.no_cluster` and
//! in Istio's metrics; the listener's other routes keep working, and the route works as soon as
//! a config defines the cluster.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

use super::routing::get;
use super::*;

use meshpath_model::l7::LoadBalancer::RoundRobin;

fn subset(name: &str) -> ClusterKey {
    ClusterKey {
        subset: Some(name.into()),
        ..key("reviews")
    }
}

fn by_version() -> Vec<HttpRoute> {
    let m = |v: &str| {
        vec![HttpMatch {
            headers: vec![("x-version".into(), Some(exact(v)))],
            ..HttpMatch::default()
        }]
    };
    vec![
        route(m("v2"), to(&subset("v2"))),
        route(vec![], to(&subset("v1"))),
    ]
}

#[tokio::test]
async fn answers_503_nc_until_the_cluster_exists() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let only_v1 = vec![(subset("v1"), cluster(&[v1.addr], RoundRobin))];
    let (tx, rx) = watch::channel(Arc::new(config(by_version(), only_v1.clone())));
    let proxy = Proxy::with_options(rx, ProxyOptions::default(), None);
    let (metrics, stats) = (proxy.istio_metrics(), proxy.stats());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dst = FixedDst {
        dst: Some(VIP),
        labels: BTreeMap::new(),
    };
    let task = tokio::spawn(serve(listener, Arc::new(dst), proxy.clone()));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let send = |version: &str| {
        let req = get(&format!("http://{addr}/"), &[("x-version", version)]);
        let (parts, body) = req.into_parts();
        let fut = client.request(Request::from_parts(parts, Full::new(body)));
        async move {
            let resp = fut.await.expect("proxy answered");
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };

    for _ in 0..2 {
        assert_eq!(send("v2").await, (503, String::new()), "Envoy's empty 503");
    }
    assert_eq!(
        send("v1").await,
        (200, "v1".to_owned()),
        "the other route works"
    );
    assert_eq!((v1.count(), v2.count()), (1, 0));
    assert!(
        stats
            .envoy_text()
            .lines()
            .any(|l| l == "http.outbound_0.0.0.0_80.no_cluster: 2"),
        "{}",
        stats.envoy_text()
    );
    assert_eq!(
        stats.router_values(),
        [("outbound_0.0.0.0_80".to_owned(), "no_cluster", 2)]
    );
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(stats.clone()));
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert!(
        text.lines().any(|l| l
            == r#"envoy_http_no_cluster_total{http_conn_manager_prefix="outbound_0.0.0.0_80"} 2"#),
        "{text}"
    );
    let nc = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_flags=\"NC\""))
        .unwrap_or_else(|| panic!("no NC series:\n{text}"));
    assert!(nc.contains("response_code=\"503\""), "{nc}");
    assert!(
        nc.contains("destination_service=\"reviews.default.svc.cluster.local\""),
        "{nc}"
    );
    assert!(nc.ends_with("} 2"), "{nc}");

    // The DestinationRule gains v2: the same routes, now with the cluster.
    let mut both = only_v1;
    both.push((subset("v2"), cluster(&[v2.addr], RoundRobin)));
    // Published, then waited for: the proxy's channel follower builds it off the request path.
    let both = Arc::new(config(by_version(), both));
    tx.send(both.clone()).unwrap();
    proxy.wait_applied(&both).await;
    assert_eq!(send("v2").await, (200, "v2".to_owned()));
    assert_eq!(send("v1").await, (200, "v1".to_owned()));
    assert_eq!((v1.count(), v2.count()), (2, 1));
    assert!(stats
        .envoy_text()
        .lines()
        .any(|l| l == "http.outbound_0.0.0.0_80.no_cluster: 2"));
    task.abort();
}
