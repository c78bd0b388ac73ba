//! A fixed request path to profile with callgrind, ignored by default. Instruction counts are
//! stable where wall-clock timings are not (a shared 2-core machine):
//!
//! ```text
//! cargo test --release -p meshpath-proxy --no-run   # note the test binary
//! MP_PROFILE_MODE=direct  valgrind --tool=callgrind <bin> tests::profile --ignored --test-threads 1
//! MP_PROFILE_MODE=proxied valgrind --tool=callgrind <bin> tests::profile --ignored --test-threads 1
//! ```
//!
//! Both runs start the same proxy and backend; `direct` sends the requests to the backend,
//! `proxied` through the proxy, so (proxied − direct) / `MP_PROFILE_REQUESTS` is what one
//! proxied request costs. The route has a header match, two weighted destinations and
//! retries configured (none needed: the backend answers 200).
//!
//! The backends here keep no record of what they saw (the other tests' backends clone every
//! request's headers into a log, which would count against the proxy: a proxied request
//! carries more headers). They still parse every header the proxy adds, as a real upstream
//! would, so that cost stays in the figure.

use super::*;

/// A backend that answers 200 with its name as the body and `x-backend: name`, like
/// [`backend`], but records nothing.
struct Lean {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Lean {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn lean_backend(name: &'static str) -> Lean {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut resp = Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                    resp.headers_mut()
                        .insert("x-backend", http::HeaderValue::from_static(name));
                    Ok::<_, Infallible>(resp)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Lean { addr, task }
}

async fn connection(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn one(sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>) {
    sender.ready().await.unwrap();
    let req = Request::get("/api/items?id=7")
        .header("host", "svc.default")
        .header("x-user", "alice")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
}

fn profiled_config(a: SocketAddr, b: SocketAddr) -> L7Config {
    let weighted = RouteAction::Route(vec![
        WeightedCluster::new(key("v1"), 80),
        WeightedCluster::new(key("v2"), 20),
    ]);
    let mut r = route(
        vec![HttpMatch {
            uri: Some(prefix("/api")),
            headers: vec![("x-user".into(), Some(exact("alice")))],
            ..HttpMatch::default()
        }],
        weighted,
    );
    r.retries = Some(RetryPolicy {
        attempts: 3,
        per_try_timeout: None,
        retry_on: vec![RetryOn::FiveXx, RetryOn::ConnectFailure],
        backoff: None,
    });
    let lb = LoadBalancer::RoundRobin;
    config(
        vec![r],
        vec![
            (key("v1"), cluster(&[a], lb.clone())),
            (key("v2"), cluster(&[b], lb)),
        ],
    )
}

#[tokio::test(flavor = "current_thread")]
#[ignore]
async fn profile_header_match_weighted_retries() {
    let n: usize = std::env::var("MP_PROFILE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let proxied = std::env::var("MP_PROFILE_MODE").as_deref() != Ok("direct");
    let a = lean_backend("a").await;
    let b = lean_backend("b").await;
    let h = start(profiled_config(a.addr, b.addr)).await;
    // Warm both paths the same way in both modes (connections, pools, lazy statics).
    let mut via_proxy = connection(h.addr).await;
    let mut via_backend = connection(a.addr).await;
    for _ in 0..20 {
        one(&mut via_proxy).await;
        one(&mut via_backend).await;
    }
    let sender = if proxied {
        &mut via_proxy
    } else {
        &mut via_backend
    };
    for _ in 0..n {
        one(sender).await;
    }
    eprintln!("profiled {n} requests, proxied: {proxied}");
}
