//! Istio's standard metrics from real requests, rendered to Prometheus text and read back by
//! prometheus_client's (Python) OpenMetrics parser when `MESHPATH_PROM_PYTHON` names a Python that has it
//! (`bash scripts/prom-python.sh`).

use std::io::Write;
use std::process::{Command, Stdio};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

use super::*;
use crate::Workload;

use meshpath_model::l7::Abort;
use meshpath_model::l7::LoadBalancer::RoundRobin;

/// Clients are `gateway`; the backend at `data_addr` is the `data` workload.
struct Pods {
    data_addr: SocketAddr,
}

fn w(app: &str, ns: &str) -> Arc<Workload> {
    Arc::new(Workload {
        name: format!("{app}-v1"),
        namespace: ns.into(),
        app: app.into(),
        version: "v1".into(),
        canonical_service: app.into(),
        canonical_revision: "v1".into(),
        trace_sampling: None,
        ..Default::default()
    })
}

impl OriginalDst for Pods {
    fn original_dst(&self, _: &TcpStream, _: SocketAddr) -> Option<SocketAddr> {
        Some(VIP)
    }
    fn source_workload(&self, peer: SocketAddr) -> Option<Arc<Workload>> {
        Some(if peer == self.data_addr {
            w("data", "store")
        } else {
            w("gateway", "shop")
        })
    }
}

/// One registry as the agent builds it: the Istio families and the cluster stats' collector.
fn scrape(proxy_metrics: &crate::istio_metrics::IstioMetrics, stats: &crate::ProxyStats) -> String {
    let mut registry = Registry::default();
    proxy_metrics.register(&mut registry);
    registry.register_collector(Box::new(stats.clone()));
    let mut out = String::new();
    encode(&mut out, &registry).unwrap();
    out
}

#[tokio::test]
async fn requests_are_counted_with_istios_labels() {
    let data = backend("data").await;
    let (tx, rx) = watch::channel(Arc::new(config(
        vec![route(
            vec![HttpMatch {
                uri: Some(prefix("/rows")),
                ..Default::default()
            }],
            to(&key("data")),
        )],
        vec![(key("data"), cluster(&[data.addr], RoundRobin))],
    )));
    let proxy = Proxy::with_options(rx, ProxyOptions::default(), None);
    let metrics = proxy.istio_metrics();
    let stats = proxy.stats();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(
        listener,
        Arc::new(Pods {
            data_addr: data.addr,
        }),
        proxy,
    ));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let get = |path: &str| {
        let req = Request::get(format!("http://{addr}{path}"))
            .header("host", "data.store")
            .body(Full::new(Bytes::new()))
            .unwrap();
        client.request(req)
    };
    for _ in 0..3 {
        assert_eq!(get("/rows").await.unwrap().status(), 200);
    }
    assert_eq!(get("/elsewhere").await.unwrap().status(), 404);
    drop(tx);

    let text = scrape(&metrics, &stats);
    if let Ok(out) = std::env::var("MESHPATH_SCRAPE_OUT") {
        std::fs::write(out, &text).unwrap();
    }
    let ok = "istio_requests_total{reporter=\"source\",source_workload=\"gateway-v1\",\
source_workload_namespace=\"shop\",source_principal=\"unknown\",source_app=\"gateway\",\
source_version=\"v1\",source_canonical_service=\"gateway\",source_canonical_revision=\"v1\",\
source_cluster=\"Kubernetes\",destination_workload=\"data-v1\",\
destination_workload_namespace=\"store\",destination_principal=\"unknown\",destination_app=\"data\",\
destination_version=\"v1\",destination_service=\"data.default.svc.cluster.local\",\
destination_service_name=\"data\",destination_service_namespace=\"default\",\
destination_canonical_service=\"data\",destination_canonical_revision=\"v1\",\
destination_cluster=\"Kubernetes\",request_protocol=\"http\",response_code=\"200\",\
grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"none\"} 3";
    assert!(text.contains(ok), "{text}");
    let nr = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"404\""))
        .expect("the 404 series");
    assert!(nr.contains("response_flags=\"NR\""), "{nr}");
    assert!(nr.contains("destination_workload=\"unknown\""), "{nr}");
    assert!(nr.contains("destination_service=\"unknown\""), "{nr}");
    assert!(nr.ends_with("} 1"), "{nr}");
    assert!(text.contains("istio_request_duration_milliseconds_bucket{"));
    assert!(text.contains("le=\"0.5\""), "Istio's first duration bucket");
    assert!(text.contains("istio_response_bytes_sum{"));
    // The backend's body is "data": 4 bytes, 3 times.
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_response_bytes_sum{")
                && l.contains("response_code=\"200\"")
                && l.ends_with(" 12.0")),
        "{text}"
    );
    // `/stats` and `/metrics` read the same counters: the 3 routed requests in both.
    let cluster = "outbound|80||data.default.svc.cluster.local";
    let envoy = stats.envoy_text();
    assert!(
        envoy
            .lines()
            .any(|l| l == format!("cluster.{cluster}.upstream_rq_total: 3")),
        "{envoy}"
    );
    let prom = format!("envoy_cluster_upstream_rq_total{{cluster_name=\"{cluster}\"}} 3");
    assert!(text.lines().any(|l| l == prom), "{prom} not in:\n{text}");
    parse_with_prometheus_client(&text);
    task.abort();
}

/// A fault abort is reported against the service its route chose (as Istio does), with the
/// `FI` flag and no destination workload: no endpoint was reached.
#[tokio::test]
async fn fault_aborts_count_against_the_routed_service() {
    let data = backend("data").await;
    let mut r = route(vec![], to(&key("data")));
    r.fault = Some(Fault {
        delay: None,
        abort: Some((Abort::Http(503), 100.0)),
    });
    let (_tx, rx) = watch::channel(Arc::new(config(
        vec![r],
        vec![(key("data"), cluster(&[data.addr], RoundRobin))],
    )));
    let proxy = Proxy::with_options(rx, ProxyOptions::default(), None);
    let metrics = proxy.istio_metrics();
    let stats = proxy.stats();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pods = Arc::new(Pods {
        data_addr: data.addr,
    });
    let task = tokio::spawn(serve(listener, pods, proxy));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    for _ in 0..2 {
        let req = Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(client.request(req).await.unwrap().status(), 503);
    }
    let text = scrape(&metrics, &stats);
    let fi = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_flags=\"FI\""))
        .unwrap_or_else(|| panic!("no FI series:\n{text}"));
    assert!(
        fi.contains("destination_service=\"data.default.svc.cluster.local\""),
        "{fi}"
    );
    assert!(fi.contains("destination_workload=\"unknown\""), "{fi}");
    assert!(
        fi.contains("response_code=\"503\"") && fi.ends_with("} 2"),
        "{fi}"
    );
    assert_eq!(data.count(), 0);
    task.abort();
}

/// The Python client library's OpenMetrics parser (the text prometheus-client encodes, `# EOF`
/// included) must read every family and sample.
fn parse_with_prometheus_client(text: &str) {
    let Ok(python) = std::env::var("MESHPATH_PROM_PYTHON") else {
        eprintln!("skipped the parser check: MESHPATH_PROM_PYTHON is not set (bash scripts/prom-python.sh)");
        return;
    };
    let script = "import sys\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
fams = list(text_string_to_metric_families(sys.stdin.read()))\n\
names = sorted(f.name for f in fams)\n\
n = sum(len(f.samples) for f in fams)\n\
print(' '.join(names), n)\n";
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "parser: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8(out.stdout).unwrap();
    for family in [
        "envoy_cluster_upstream_rq",
        "envoy_cluster_upstream_cx_active",
        "istio_request_bytes",
        "istio_request_duration_milliseconds",
        "istio_requests",
        "istio_response_bytes",
    ] {
        assert!(
            out.split_whitespace().any(|f| f == family),
            "{family}: {out}"
        );
    }
}
