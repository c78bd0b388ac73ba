//! Request ids, B3 propagation, span export, and config swaps.

use super::*;

use meshpath_model::l7::LoadBalancer::RoundRobin;

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn ids_are_created_when_absent_and_continued_when_present() {
    let a = backend("a").await;
    let h = start(config(
        vec![],
        vec![(key("svc"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    h.get("/").await;
    let seen = a.last();
    let rid = seen.header("x-request-id").unwrap();
    let parts: Vec<_> = rid.split('-').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12],
        "{rid}"
    );
    assert!(parts.iter().all(|p| is_hex(p, p.len())));
    assert!(parts[2].starts_with('4'), "version 4: {rid}");
    assert!(
        matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
        "RFC 4122 variant: {rid}"
    );
    assert!(is_hex(seen.header("x-b3-traceid").unwrap(), 32));
    assert!(is_hex(seen.header("x-b3-spanid").unwrap(), 16));
    assert_eq!(seen.header("x-b3-sampled"), Some("1"));
    assert_eq!(seen.header("x-b3-parentspanid"), None);

    let trace = "463ac35c9f6413ad48485a3953bb6124";
    let incoming = [
        ("x-request-id", "my-id"),
        ("x-b3-traceid", trace),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-sampled", "0"),
    ];
    h.get_with("/", &incoming).await;
    let seen = a.last();
    assert_eq!(seen.header("x-request-id"), Some("my-id"));
    assert_eq!(seen.header("x-b3-traceid"), Some(trace));
    assert_eq!(seen.header("x-b3-parentspanid"), Some("a2fb4a1d1a96d312"));
    let span = seen.header("x-b3-spanid").unwrap();
    assert!(is_hex(span, 16) && span != "a2fb4a1d1a96d312");
    assert_eq!(
        seen.header("x-b3-sampled"),
        Some("0"),
        "the caller's sampling decision stands"
    );
}

#[derive(Default)]
struct Collect(Mutex<Vec<Span>>);

impl SpanExporter for Collect {
    fn export(&self, span: Span) {
        self.0.lock().unwrap().push(span);
    }
}

#[tokio::test]
async fn sampled_requests_are_exported_as_spans() {
    let a = backend("a").await;
    let spans = Arc::new(Collect::default());
    let dst = FixedDst {
        dst: Some(VIP),
        labels: BTreeMap::new(),
    };
    let h = start_with(
        config(vec![], vec![(key("svc"), cluster(&[a.addr], RoundRobin))]),
        dst,
        Some(spans.clone()),
    )
    .await;
    h.get("/traced").await;
    let span = spans.0.lock().unwrap().pop().expect("one span");
    let seen = a.last();
    assert_eq!(Some(span.trace_id.as_str()), seen.header("x-b3-traceid"));
    assert_eq!(Some(span.span_id.as_str()), seen.header("x-b3-spanid"));
    assert_eq!(
        (span.method.as_str(), span.path.as_str(), span.status),
        ("GET", "/traced", 200)
    );
    assert_eq!(
        span.upstream_cluster.as_deref(),
        Some("outbound|80||svc.default.svc.cluster.local")
    );
    assert_eq!(span.operation, "svc.default.svc.cluster.local:80/*");
    assert_eq!((span.protocol, span.response_flags), ("HTTP/1.1", "-"));
    assert_eq!(span.upstream_addr, Some(a.addr));
    assert_eq!(span.parent_span_id, None);
    assert_eq!(span.request_id.as_deref(), seen.header("x-request-id"));
    assert_eq!(span.authority, "svc.default");
    assert!(span.duration < Duration::from_secs(1) && span.start <= std::time::SystemTime::now());
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_config_they_started_with() {
    let old = backend_with("old", Arc::new(|_, _| (200, Duration::from_millis(300)))).await;
    let new = backend("new").await;
    let h = Arc::new(
        start(config(
            vec![],
            vec![(key("svc"), cluster(&[old.addr], RoundRobin))],
        ))
        .await,
    );
    let slow = {
        let h = h.clone();
        tokio::spawn(async move { h.get("/").await.body })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.tx.send(Arc::new(config(
        vec![],
        vec![(key("svc"), cluster(&[new.addr], RoundRobin))],
    )))
    .unwrap();
    assert_eq!(h.get("/").await.body, "new");
    assert_eq!(slow.await.unwrap(), "old");
}
