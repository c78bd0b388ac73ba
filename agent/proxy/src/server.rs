//! The downstream side: accept loop and one hyper connection per client, HTTP/1.1 or h2c
//! (prior knowledge; the first bytes tell which).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::handler::{handle, ConnCtx};
use super::{OriginalDst, Proxy};

/// Serves `listener` until the task is dropped or aborted. Each accepted connection is asked
/// once for its original destination and source labels; every request on it is routed by the
/// config current when the request arrives.
pub async fn serve(listener: TcpListener, original_dst: Arc<dyn OriginalDst>, proxy: Arc<Proxy>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No header-read timeout, like Envoy's default `request_headers_timeout: 0` (hyper's would
    // also cost a timer allocation per request).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning; the listener stays usable.
                warn!(%error, "accepting a proxy connection failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let conn = Arc::new(ConnCtx {
            original_dst: original_dst.original_dst(&stream, peer),
            source_labels: original_dst.source_labels(peer),
            source: original_dst.source_workload(peer),
            resolver: original_dst.clone(),
            proxy: proxy.clone(),
            peer,
            local,
        });
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let conn = conn.clone();
                async move { Ok::<_, Infallible>(handle(&conn, req).await) }
            });
            if let Err(error) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, %error, "proxy connection ended with an error");
            }
        });
    }
}
