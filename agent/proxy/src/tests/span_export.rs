//! Spans through the real exporter to a real HTTP receiver: what Zipkin and OTLP collectors are
//! sent, per-workload sampling, response flags and the error tag.

use serde_json::Value;
use tokio::time::Instant;

use super::*;
use crate::export::{ExportOptions, Exporter, Format, TraceMeta};
use crate::Workload;

use meshpath_model::l7::LoadBalancer::RoundRobin;

/// The client is a known workload (what the agent finds from the pod at the peer address).
struct WorkloadDst(Arc<Workload>);

impl OriginalDst for WorkloadDst {
    fn original_dst(&self, _: &TcpStream, _: SocketAddr) -> Option<SocketAddr> {
        Some(VIP)
    }
    fn source_workload(&self, _: SocketAddr) -> Option<Arc<Workload>> {
        Some(self.0.clone())
    }
}

fn productpage(sampling: Option<f64>) -> Arc<Workload> {
    Arc::new(Workload {
        name: "productpage-v1".into(),
        namespace: "bookinfo".into(),
        app: "productpage".into(),
        version: "v1".into(),
        canonical_service: "productpage".into(),
        canonical_revision: "v1".into(),
        trace_sampling: sampling,
        ..Default::default()
    })
}

fn exporter(collector: SocketAddr, format: Format) -> Arc<Exporter> {
    Exporter::start(ExportOptions {
        collector: format!("http://{collector}").parse().unwrap(),
        format,
        meta: TraceMeta {
            node_id: "meshpath~node-a".into(),
            mesh_id: "cluster.local".into(),
            fallback_service: "meshpath-proxy".into(),
        },
        queue: 64,
        batch: 16,
        flush: Duration::from_millis(50),
    })
    .unwrap()
}

/// Every span the collector received so far (Zipkin: arrays of spans).
fn zipkin_spans(c: &Backend) -> Vec<Value> {
    c.seen
        .lock()
        .unwrap()
        .iter()
        .flat_map(|s| {
            assert_eq!(s.uri, "/api/v2/spans");
            let v: Value = serde_json::from_slice(&s.body).unwrap();
            v.as_array().unwrap().clone()
        })
        .collect()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn zipkin_spans_carry_istios_names_and_tags() {
    let collector = backend("collector").await;
    let a = backend_with(
        "a",
        Arc::new(|s: &Seen, _| {
            (
                if s.uri.contains("fail") { 503 } else { 200 },
                Duration::ZERO,
            )
        }),
    )
    .await;
    let exp = exporter(collector.addr, Format::Zipkin);
    let h = start_with(
        config(vec![], vec![(key("svc"), cluster(&[a.addr], RoundRobin))]),
        WorkloadDst(productpage(None)),
        Some(exp.clone()),
    )
    .await;
    h.get_with("/ok?x=1", &[("x-request-id", "rid-1")]).await;
    h.get("/fail").await;
    wait_for("two spans", || zipkin_spans(&collector).len() == 2).await;
    // Counted once the collector's answer is back (after it recorded the spans).
    wait_for("the exports counted", || {
        exp.stats().exported.load(Ordering::Relaxed) >= 2
    })
    .await;
    let spans = zipkin_spans(&collector);
    let ok = spans
        .iter()
        .find(|s| s["tags"]["http.status_code"] == "200")
        .unwrap();
    let seen = &a.seen.lock().unwrap()[0];
    assert_eq!(ok["traceId"], seen.header("x-b3-traceid").unwrap());
    assert_eq!(ok["id"], seen.header("x-b3-spanid").unwrap());
    assert_eq!(ok["name"], "svc.default.svc.cluster.local:80/*");
    assert_eq!(ok["kind"], "CLIENT");
    assert_eq!(ok["localEndpoint"]["serviceName"], "productpage.bookinfo");
    assert_eq!(ok["remoteEndpoint"]["port"], a.addr.port());
    assert!(ok["duration"].as_u64().unwrap() >= 1);
    assert!(ok.get("parentId").is_none());
    let tags = &ok["tags"];
    for (k, v) in [
        ("component", "proxy"),
        ("guid:x-request-id", "rid-1"),
        ("http.method", "GET"),
        ("http.protocol", "HTTP/1.1"),
        (
            "upstream_cluster",
            "outbound|80||svc.default.svc.cluster.local",
        ),
        ("response_flags", "-"),
        ("istio.canonical_service", "productpage"),
        ("istio.canonical_revision", "v1"),
        ("istio.namespace", "bookinfo"),
        ("istio.mesh_id", "cluster.local"),
        ("node_id", "meshpath~node-a"),
    ] {
        assert_eq!(tags[k], v, "tag {k}");
    }
    assert_eq!(tags["http.url"], "http://svc.default/ok?x=1");
    assert!(tags.get("error").is_none());
    let failed = spans
        .iter()
        .find(|s| s["tags"]["http.status_code"] == "503")
        .unwrap();
    assert_eq!(failed["tags"]["error"], "true");
    assert_eq!(exp.stats().exported.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn the_source_workloads_sampling_overrides_the_proxys() {
    let collector = backend("collector").await;
    let a = backend("a").await;
    let exp = exporter(collector.addr, Format::Zipkin);
    // The proxy samples 100% (the harness); this workload asks for none.
    let h = start_with(
        config(vec![], vec![(key("svc"), cluster(&[a.addr], RoundRobin))]),
        WorkloadDst(productpage(Some(0.0))),
        Some(exp.clone()),
    )
    .await;
    for _ in 0..20 {
        h.get("/").await;
    }
    assert_eq!(a.last().header("x-b3-sampled"), Some("0"));
    // A caller's decision still wins over the workload's percentage.
    h.get_with("/", &[("x-b3-sampled", "1")]).await;
    wait_for("the one sampled span", || {
        zipkin_spans(&collector).len() == 1
    })
    .await;
    // The exporter counts a batch once the collector's answer is back, after the collector has
    // recorded the spans: wait for the count too.
    wait_for("the export counted", || {
        exp.stats().exported.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(exp.stats().exported.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn no_route_is_flagged_nr() {
    let collector = backend("collector").await;
    let exp = exporter(collector.addr, Format::Zipkin);
    let h = start_with(
        config(
            vec![route(
                vec![HttpMatch {
                    uri: Some(exact("/only")),
                    ..Default::default()
                }],
                to(&key("svc")),
            )],
            vec![(key("svc"), cluster(&[dead_addr().await], RoundRobin))],
        ),
        WorkloadDst(productpage(None)),
        Some(exp),
    )
    .await;
    assert_eq!(h.get("/elsewhere").await.status, 404);
    wait_for("a span", || zipkin_spans(&collector).len() == 1).await;
    let s = &zipkin_spans(&collector)[0];
    assert_eq!(s["tags"]["response_flags"], "NR");
    assert_eq!(s["tags"]["upstream_cluster"], "-");
    // No route, no decorator: Envoy's outbound span keeps `egress <host>`.
    assert_eq!(s["name"], "egress svc.default");
}

#[tokio::test]
async fn spans_carry_body_sizes_the_user_agent_and_the_matched_routes_operation() {
    let collector = backend("collector").await;
    let (a, b) = (backend("a").await, backend("bb").await);
    let prefix_route = route(
        vec![HttpMatch {
            uri: Some(prefix("/api")),
            ..Default::default()
        }],
        to(&key("a")),
    );
    let mut split = route(
        vec![],
        RouteAction::Route(vec![
            WeightedCluster::new(key("a"), 50),
            WeightedCluster::new(key("b"), 50),
        ]),
    );
    split.virtual_service = Some("ab-split".into());
    let h = start_with(
        config(
            vec![prefix_route, split],
            vec![
                (key("a"), cluster(&[a.addr], RoundRobin)),
                (key("b"), cluster(&[b.addr], RoundRobin)),
            ],
        ),
        WorkloadDst(productpage(None)),
        Some(exporter(collector.addr, Format::Zipkin)),
    )
    .await;
    let post = Request::post("/api/orders")
        .header("user-agent", "curl/8.14.1")
        .body(Bytes::from_static(b"0123456789"))
        .unwrap();
    assert_eq!(h.send(post).await.body, "a");
    h.get("/other").await;
    wait_for("two spans", || zipkin_spans(&collector).len() == 2).await;
    let spans = zipkin_spans(&collector);
    let api = spans
        .iter()
        .find(|s| s["tags"]["http.method"] == "POST")
        .unwrap();
    // Istio's decorator for a prefix match: `<host>:<port><prefix>*`.
    assert_eq!(api["name"], "a.default.svc.cluster.local:80/api*");
    let tags = &api["tags"];
    assert_eq!(
        (
            &tags["user_agent"],
            &tags["request_size"],
            &tags["response_size"]
        ),
        (&"curl/8.14.1".into(), &"10".into(), &"1".into())
    );
    let other = spans
        .iter()
        .find(|s| s["tags"]["http.method"] == "GET")
        .unwrap();
    // Several destinations: the VirtualService's name and the listener's port.
    assert_eq!(other["name"], "ab-split:80/*");
    assert_eq!(other["tags"]["user_agent"], "-");
    assert_eq!(other["tags"]["request_size"], "0");
}

#[tokio::test]
async fn otlp_export_posts_v1_traces() {
    let collector = backend("collector").await;
    let a = backend("a").await;
    let h = start_with(
        config(vec![], vec![(key("svc"), cluster(&[a.addr], RoundRobin))]),
        WorkloadDst(productpage(None)),
        Some(exporter(collector.addr, Format::Otlp)),
    )
    .await;
    h.get("/").await;
    wait_for("a POST", || collector.count() == 1).await;
    let seen = collector.last();
    assert_eq!(seen.uri, "/v1/traces");
    assert_eq!(seen.header("content-type"), Some("application/json"));
    let v: Value = serde_json::from_slice(&seen.body).unwrap();
    let rs = &v["resourceSpans"][0];
    assert_eq!(
        rs["resource"]["attributes"][0]["value"]["stringValue"],
        "productpage.bookinfo"
    );
    let span = &rs["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], a.last().header("x-b3-traceid").unwrap());
    assert_eq!(span["kind"], 3);
    assert_eq!(span["name"], "svc.default.svc.cluster.local:80/*");
    let start: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(end >= start && start > 0);
}

#[tokio::test]
async fn a_full_queue_drops_spans_without_blocking_requests() {
    // The collector never answers: every batch's POST hangs, the queue fills.
    let stuck = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stuck.local_addr().unwrap();
    let exp = Exporter::start(ExportOptions {
        collector: format!("http://{addr}").parse().unwrap(),
        format: Format::Zipkin,
        meta: TraceMeta {
            node_id: "n".into(),
            mesh_id: "m".into(),
            fallback_service: "f".into(),
        },
        queue: 4,
        batch: 1,
        flush: Duration::from_millis(1),
    })
    .unwrap();
    let a = backend("a").await;
    let h = start_with(
        config(vec![], vec![(key("svc"), cluster(&[a.addr], RoundRobin))]),
        WorkloadDst(productpage(None)),
        Some(exp.clone()),
    )
    .await;
    for _ in 0..20 {
        assert_eq!(h.get("/").await.status, 200);
    }
    // One in flight, four queued, the rest dropped.
    assert!(exp.stats().dropped.load(Ordering::Relaxed) >= 15);
    drop(stuck);
}

#[tokio::test]
async fn upstream_failures_carry_envoys_flags() {
    let collector = backend("collector").await;
    let exp = exporter(collector.addr, Format::Zipkin);
    let h = start_with(
        config(
            vec![],
            vec![(key("svc"), cluster(&[dead_addr().await], RoundRobin))],
        ),
        WorkloadDst(productpage(None)),
        Some(exp),
    )
    .await;
    // Istio's default retries (2, on connect-failure) are spent: 503, "UF,URX".
    assert_eq!(h.get("/").await.status, 503);
    wait_for("a span", || zipkin_spans(&collector).len() == 1).await;
    let s = &zipkin_spans(&collector)[0];
    assert_eq!(s["tags"]["response_flags"], "UF,URX");
    assert_eq!(s["tags"]["error"], "true");
}
