//! Rough in-process numbers, ignored by default (client, proxy and backend share the cores):
//! `cargo test --release -p meshpath proxy::tests::bench -- --ignored --nocapture --test-threads 1`

use std::time::Instant;

use hyper::client::conn::http1;

use super::*;

use crate::l7::LoadBalancer::RoundRobin;

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
    let direct = saturate(backend, 32, 3).await;
    let proxied = saturate(h.addr, 32, 3).await;
    eprintln!("direct {direct:.0} req/s, proxied {proxied:.0} req/s");
    // `MP_BENCH_EXTERNAL`: another proxy in front of the same backend, for comparison.
    if let Ok(other) = std::env::var("MP_BENCH_EXTERNAL") {
        let other = saturate(other.parse().unwrap(), 32, 3).await;
        eprintln!("external proxy {other:.0} req/s");
    }
    eprintln!(
        "process RSS {} KiB before, {} KiB after (client, proxy and backend)",
        rss0,
        rss_kib()
    );
}
