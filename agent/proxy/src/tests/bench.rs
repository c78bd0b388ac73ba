//! Rough in-process numbers, ignored by default (client, proxy and backend share the cores):
//! `cargo test --release -p meshpath proxy::tests::bench -- --ignored --nocapture --test-threads 1`

use std::time::Instant;

use hyper::client::conn::http1;

use super::*;

use meshpath_model::l7::LoadBalancer::RoundRobin;

/// A backend that answers "ok" and records nothing.
/// `MP_BENCH_BACKEND` fixes its address (to put another proxy, e.g. nginx, in front of it).
async fn plain_backend() -> (SocketAddr, JoinHandle<()>) {
    let at = std::env::var("MP_BENCH_BACKEND").unwrap_or_else(|_| "127.0.0.1:0".into());
    let listener = TcpListener::bind(at).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

async fn connection(addr: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn one(sender: &mut http1::SendRequest<Full<Bytes>>) {
    sender.ready().await.unwrap();
    let req = Request::get("/")
        .header("host", "svc.default")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
}

/// Latencies (µs, sorted) of `n` requests paced at `qps` over one keep-alive connection.
async fn paced(addr: SocketAddr, n: usize, qps: u64) -> Vec<u64> {
    let mut sender = connection(addr).await;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / qps));
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        tick.tick().await;
        let t = Instant::now();
        one(&mut sender).await;
        lat.push(t.elapsed().as_micros() as u64);
    }
    lat.sort_unstable();
    lat
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn latency_at_1000_qps() {
    let (backend, _b) = plain_backend().await;
    let h = start(config(
        vec![],
        vec![(key("svc"), cluster(&[backend], RoundRobin))],
    ))
    .await;
    paced(h.addr, 500, 1000).await;
    for round in 0..3 {
        let direct = paced(backend, 5000, 1000).await;
        let proxied = paced(h.addr, 5000, 1000).await;
        let line = |l: &[u64]| {
            format!(
                "p50 {} µs, p90 {} µs, p99 {} µs",
                pct(l, 0.5),
                pct(l, 0.9),
                pct(l, 0.99)
            )
        };
        eprintln!("round {round}: direct  {}", line(&direct));
        eprintln!("round {round}: proxied {}", line(&proxied));
        eprintln!(
            "round {round}: added p90 {} µs",
            pct(&proxied, 0.9) as i64 - pct(&direct, 0.9) as i64
        );
    }
}

/// Requests per second with `conns` connections each sending back to back for `secs`.
async fn saturate(addr: SocketAddr, conns: usize, secs: u64) -> f64 {
    let stop = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            tokio::spawn(async move {
                let mut sender = connection(addr).await;
                let mut n = 0u64;
                while Instant::now() < stop {
                    one(&mut sender).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / secs as f64
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap())
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn max_throughput() {
    let (backend, _b) = plain_backend().await;
    let h = start(config(
        vec![],
        vec![(key("svc"), cluster(&[backend], RoundRobin))],
    ))
    .await;
    let rss0 = rss_kib();
    // `MP_BENCH_EXTERNAL`: another proxy in front of the same backend, for comparison.
    let other: Option<SocketAddr> = std::env::var("MP_BENCH_EXTERNAL")
        .ok()
        .map(|a| a.parse().unwrap());
    for round in 0..3 {
        let direct = saturate(backend, 32, 3).await;
        let proxied = saturate(h.addr, 32, 3).await;
        eprintln!("round {round}: direct {direct:.0} req/s, proxied {proxied:.0} req/s");
        if let Some(other) = other {
            eprintln!(
                "round {round}: external proxy {:.0} req/s",
                saturate(other, 32, 3).await
            );
        }
    }
    eprintln!(
        "process RSS {} KiB before, {} KiB after (client, proxy and backend)",
        rss0,
        rss_kib()
    );
}

/// Counts heap allocations in this test binary, to see what one proxied request costs.
struct Counting;

static ALLOCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations one request costs through the proxy (its share over a direct request) with
/// `cfg` as the proxy's config.
async fn proxy_allocations(cfg: L7Config, backend: SocketAddr) -> (f64, f64) {
    let h = start(cfg).await;
    let count = |addr| async move {
        let mut sender = connection(addr).await;
        one(&mut sender).await;
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..10_000 {
            one(&mut sender).await;
        }
        (ALLOCS.load(Ordering::Relaxed) - before) as f64 / 10_000.0
    };
    (count(backend).await, count(h.addr).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn allocations_per_request() {
    let (backend, _b) = plain_backend().await;
    let cfg = config(vec![], vec![(key("svc"), cluster(&[backend], RoundRobin))]);
    let (direct, proxied) = proxy_allocations(cfg, backend).await;
    eprintln!(
        "allocations per request: direct {direct:.1}, proxied {proxied:.1}, proxy's share {:.1}",
        proxied - direct
    );
}

/// The same with `outlierDetection` on the cluster: every result is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn allocations_per_request_with_outlier_detection() {
    let (backend, _b) = plain_backend().await;
    let mut c = cluster(&[backend], RoundRobin);
    c.policy.outlier_detection = Some(OutlierDetection {
        consecutive_5xx_errors: Some(5),
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 100,
        ..OutlierDetection::default()
    });
    let (direct, proxied) = proxy_allocations(config(vec![], vec![(key("svc"), c)]), backend).await;
    eprintln!(
        "allocations per request with outlier detection: direct {direct:.1}, proxied {proxied:.1}, proxy's share {:.1}",
        proxied - direct
    );
}

/// What tracing costs: requests per second with no exporter, and with spans exported (Zipkin,
/// to a local receiver) at Istio's default 1 % and at 100 % sampling. Istio's metrics are
/// recorded in all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn tracing_cost() {
    use crate::export::{ExportOptions, Exporter, Format, TraceMeta};
    let (backend, _b) = plain_backend().await;
    let (collector, _c) = plain_backend().await;
    let cfg = || config(vec![], vec![(key("svc"), cluster(&[backend], RoundRobin))]);
    let proxy_at = |sampling: f64, exporter: Option<Arc<dyn SpanExporter>>| {
        let (tx, rx) = watch::channel(Arc::new(cfg()));
        let proxy = Proxy::with_options(
            rx,
            ProxyOptions {
                trace_sampling: sampling,
                ..ProxyOptions::default()
            },
            exporter,
        );
        async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let dst = FixedDst {
                dst: Some(VIP),
                labels: BTreeMap::new(),
            };
            let task = tokio::spawn(serve(listener, Arc::new(dst), proxy));
            (addr, task, tx)
        }
    };
    let exporter = || -> Arc<dyn SpanExporter> {
        Exporter::start(ExportOptions {
            collector: format!("http://{collector}").parse().unwrap(),
            format: Format::Zipkin,
            meta: TraceMeta {
                node_id: "bench".into(),
                mesh_id: "cluster.local".into(),
                fallback_service: "bench".into(),
            },
            queue: 4096,
            batch: 256,
            flush: Duration::from_millis(200),
        })
        .unwrap()
    };
    let none = proxy_at(1.0, None).await;
    let one = proxy_at(1.0, Some(exporter())).await;
    let all = proxy_at(100.0, Some(exporter())).await;
    for round in 0..2 {
        let a = saturate(none.0, 32, 3).await;
        let b = saturate(one.0, 32, 3).await;
        let c = saturate(all.0, 32, 3).await;
        eprintln!(
            "round {round}: no export {a:.0} req/s, 1% sampled {b:.0} req/s, 100% sampled {c:.0} req/s"
        );
    }
}
