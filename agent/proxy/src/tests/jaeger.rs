//! Spans from two proxy hops (gateway → springboot → data, each app propagating the B3 headers
//! it received) exported to a real Jaeger, read back through Jaeger's query API. Needs the
//! Jaeger binary: `MESHPATH_JAEGER=$(bash scripts/jaeger.sh)`; skipped with a reason otherwise.

use std::process::{Child, Command, Stdio};

use serde_json::Value;
use tokio::time::Instant;

use super::*;
use crate::export::{ExportOptions, Exporter, Format, TraceMeta};
use crate::Workload;

use meshpath_model::l7::LoadBalancer::RoundRobin;

const CONFIG: &str = include_str!("jaeger/jaeger.yaml");

struct Jaeger {
    child: Child,
    query: SocketAddr,
    zipkin: SocketAddr,
    otlp: SocketAddr,
    _dir: tempdir::Dir,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Free loopback ports (bound then released: the kernel does not hand them out again at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, Bytes)> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .get(format!("http://{addr}{path}").parse().unwrap())
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.into_body().collect().await.ok()?.to_bytes()))
}

async fn start_jaeger() -> Option<Jaeger> {
    let Ok(bin) = std::env::var("MESHPATH_JAEGER") else {
        eprintln!(
            "skipped: MESHPATH_JAEGER is not set (MESHPATH_JAEGER=$(bash scripts/jaeger.sh))"
        );
        return None;
    };
    let dir = std::env::temp_dir().join(format!(
        "meshpath-jaeger-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("jaeger.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let child = Command::new(bin)
        .arg("--config")
        .arg(format!("file:{}", config.display()))
        .env("JAEGER_QUERY_PORT", ports[0].to_string())
        .env("JAEGER_QUERY_GRPC_PORT", ports[1].to_string())
        .env("JAEGER_ZIPKIN_PORT", ports[2].to_string())
        .env("JAEGER_OTLP_PORT", ports[3].to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting jaeger");
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let j = Jaeger {
        child,
        query: at(ports[0]),
        zipkin: at(ports[2]),
        otlp: at(ports[3]),
        _dir: tempdir::Dir(dir),
    };
    let until = Instant::now() + Duration::from_secs(30);
    while !matches!(http_get(j.query, "/api/services").await, Some((200, _))) {
        assert!(Instant::now() < until, "jaeger's query API did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(j)
}

struct WorkloadDst(Arc<Workload>);

impl OriginalDst for WorkloadDst {
    fn original_dst(&self, _: &TcpStream, _: SocketAddr) -> Option<SocketAddr> {
        Some(VIP)
    }
    fn source_workload(&self, _: SocketAddr) -> Option<Arc<Workload>> {
        Some(self.0.clone())
    }
}

fn workload(app: &str) -> Arc<Workload> {
    Arc::new(Workload {
        name: app.into(),
        namespace: "shop".into(),
        app: app.into(),
        version: "v1".into(),
        canonical_service: app.into(),
        canonical_revision: "v1".into(),
        trace_sampling: None,
        ..Default::default()
    })
}

fn exporter(collector: SocketAddr, format: Format) -> Arc<Exporter> {
    Exporter::start(ExportOptions {
        collector: format!("http://{collector}").parse().unwrap(),
        format,
        meta: TraceMeta {
            node_id: "meshpath~127.0.0.1~node-a~cluster.local".into(),
            mesh_id: "cluster.local".into(),
            fallback_service: "meshpath-proxy.node-a".into(),
        },
        queue: 64,
        batch: 16,
        flush: Duration::from_millis(20),
    })
    .unwrap()
}

/// Jaeger's traces of `service` once one has `spans` spans.
async fn trace_of(j: &Jaeger, service: &str, spans: usize) -> Value {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((200, body)) =
            http_get(j.query, &format!("/api/traces?service={service}")).await
        {
            let v: Value = serde_json::from_slice(&body).unwrap();
            if let Some(t) = v["data"].as_array().and_then(|d| d.first()) {
                if t["spans"].as_array().map_or(0, Vec::len) == spans {
                    return t.clone();
                }
            }
        }
        assert!(
            Instant::now() < until,
            "no trace of {service} with {spans} spans in jaeger"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .and_then(|t| t["value"].as_str())
}

/// Two hops as the apps make them: the gateway calls springboot through the proxy; springboot
/// (the backend) calls data through the proxy with the B3 headers it received.
async fn two_hops(format: Format, j: &Jaeger) -> String {
    let collector = match format {
        Format::Zipkin => j.zipkin,
        Format::Otlp => j.otlp,
    };
    let exp = exporter(collector, format);
    let springboot = backend_with(
        "springboot",
        Arc::new(|_, _| (200, Duration::from_millis(5))),
    )
    .await;
    let data = backend("data").await;
    let to_springboot = start_with(
        config(
            vec![route(vec![], to(&key("springboot")))],
            vec![(key("springboot"), cluster(&[springboot.addr], RoundRobin))],
        ),
        WorkloadDst(workload("gateway")),
        Some(exp.clone()),
    )
    .await;
    let to_data = start_with(
        config(
            vec![route(vec![], to(&key("data")))],
            vec![(key("data"), cluster(&[data.addr], RoundRobin))],
        ),
        WorkloadDst(workload("springboot")),
        Some(exp.clone()),
    )
    .await;
    assert_eq!(to_springboot.get("/api/orders").await.status, 200);
    let seen = springboot.last();
    let propagated: Vec<(&str, &str)> = [
        "x-request-id",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
    ]
    .iter()
    .map(|k| (*k, seen.header(k).unwrap()))
    .collect();
    assert_eq!(to_data.get_with("/rows", &propagated).await.status, 200);
    seen.header("x-b3-traceid").unwrap().to_owned()
}

fn check_trace(t: &Value, trace_id: &str) {
    assert_eq!(t["traceID"], trace_id);
    let spans = t["spans"].as_array().unwrap();
    let service =
        |s: &Value| t["processes"][s["processID"].as_str().unwrap()]["serviceName"].clone();
    let first = spans
        .iter()
        .find(|s| service(s) == "gateway.shop")
        .expect("the gateway's span");
    let second = spans
        .iter()
        .find(|s| service(s) == "springboot.shop")
        .expect("springboot's span");
    assert_eq!(
        first["operationName"],
        "springboot.default.svc.cluster.local:80/*"
    );
    assert_eq!(
        second["operationName"],
        "data.default.svc.cluster.local:80/*"
    );
    assert!(
        first["references"].as_array().unwrap().is_empty(),
        "the root"
    );
    let r = &second["references"][0];
    assert_eq!(
        (r["refType"].as_str(), r["spanID"].as_str()),
        (Some("CHILD_OF"), first["spanID"].as_str())
    );
    // The first hop waited at least the backend's 5 ms.
    assert!(
        first["duration"].as_u64().unwrap() >= 5000,
        "{}",
        first["duration"]
    );
    assert!(second["duration"].as_u64().unwrap() >= 1);
    for (k, v) in [
        ("http.method", "GET"),
        ("http.status_code", "200"),
        ("http.protocol", "HTTP/1.1"),
        (
            "upstream_cluster",
            "outbound|80||springboot.default.svc.cluster.local",
        ),
        ("response_flags", "-"),
        ("component", "proxy"),
        ("istio.canonical_service", "gateway"),
        ("istio.namespace", "shop"),
        ("istio.mesh_id", "cluster.local"),
    ] {
        assert_eq!(tag(first, k), Some(v), "tag {k}");
    }
    assert_eq!(
        tag(first, "http.url"),
        Some("http://svc.default/api/orders")
    );
    assert_eq!(tag(second, "istio.canonical_service"), Some("springboot"));
    assert_eq!(
        tag(first, "guid:x-request-id"),
        tag(second, "guid:x-request-id")
    );
}

#[tokio::test]
async fn a_two_hop_trace_in_jaeger_zipkin() {
    let Some(j) = start_jaeger().await else {
        return;
    };
    let trace_id = two_hops(Format::Zipkin, &j).await;
    let t = trace_of(&j, "gateway.shop", 2).await;
    if let Ok(out) = std::env::var("MESHPATH_JAEGER_TRACE_OUT") {
        std::fs::write(out, serde_json::to_vec_pretty(&t).unwrap()).unwrap();
    }
    check_trace(&t, &trace_id);
}

#[tokio::test]
async fn a_two_hop_trace_in_jaeger_otlp() {
    let Some(j) = start_jaeger().await else {
        return;
    };
    let trace_id = two_hops(Format::Otlp, &j).await;
    check_trace(&trace_of(&j, "gateway.shop", 2).await, &trace_id);
}
