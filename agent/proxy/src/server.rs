//! The downstream side: accept loop and one hyper connection per client, HTTP/1.1 or h2c
//! (prior knowledge; the first bytes tell which).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::body::ClientBody;
use super::h1::{self, Served, Switched};
use super::handler::{handle, ConnCtx};
use super::workers::{self, Workers};
use super::{OriginalDst, Proxy};

/// How [`serve_until`] stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Close the listener, let every connection finish the request it is serving, then end
    /// them (the agent's orderly exit).
    Drain,
    /// Close the listener and leave its connections running until their clients end them (the
    /// listener's frontend stopped being steered here: what it already serves keeps being
    /// served, as an Envoy listener removed from the config drains only its own socket).
    Detach,
}

/// Serves `listener` until the task is dropped or aborted. Each accepted connection is asked
/// once for its original destination and source labels; every request on it is routed by the
/// config current when the request arrives.
pub async fn serve(listener: TcpListener, original_dst: Arc<dyn OriginalDst>, proxy: Arc<Proxy>) {
    serve_until(
        listener,
        original_dst,
        proxy,
        std::future::pending::<Stop>(),
    )
    .await
}

/// As [`serve`] until `drain` resolves; then closes the listener. With [`Stop::Drain`] it lets
/// every connection finish the request it is serving (HTTP/1 answers it and closes, idle
/// connections close at once; h2 sends GOAWAY) and returns when the last connection has ended;
/// with [`Stop::Detach`] it returns at once and the connections run on by themselves. Whoever drains should first
/// make sure no new connection is headed here: whatever waits in the accept queue when the
/// listener closes is reset.
pub async fn serve_until(
    listener: TcpListener,
    original_dst: Arc<dyn OriginalDst>,
    proxy: Arc<Proxy>,
    drain: impl std::future::Future<Output = Stop>,
) {
    serve_with(listener, original_dst, proxy, None, drain).await
}

/// As [`serve_until`], each accepted connection served on one of `workers` in turn (and the
/// upstream connections its requests open with it) instead of the caller's runtime.
pub async fn serve_on(
    workers: Arc<Workers>,
    listener: TcpListener,
    original_dst: Arc<dyn OriginalDst>,
    proxy: Arc<Proxy>,
    drain: impl std::future::Future<Output = Stop>,
) {
    serve_with(listener, original_dst, proxy, Some(workers), drain).await
}

async fn serve_with(
    listener: TcpListener,
    original_dst: Arc<dyn OriginalDst>,
    proxy: Arc<Proxy>,
    workers: Option<Arc<Workers>>,
    drain: impl std::future::Future<Output = Stop>,
) {
    let builder = Arc::new(builder());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(drain);
    let accept = async {
        loop {
            accept_one(
                &listener,
                &builder,
                &original_dst,
                &proxy,
                &stop_rx,
                workers.as_deref(),
                &mut conns,
            )
            .await;
            // Reap finished connections so the set does not grow with every one ever served.
            while conns.try_join_next().is_some() {}
        }
    };
    let stop = tokio::select! {
        () = accept => Stop::Drain,
        stop = &mut drain => stop,
    };
    drop(listener);
    if stop == Stop::Detach {
        let open = conns.len();
        conns.detach_all();
        debug!(
            connections = open,
            "proxy listener closed; its connections run on"
        );
        return;
    }
    let _ = stop_tx.send(true);
    let open = conns.len();
    while conns.join_next().await.is_some() {}
    debug!(connections = open, "proxy listener drained");
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No header-read timeout, like Envoy's default `request_headers_timeout: 0` (hyper's would
    // also cost a timer allocation per request).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        // A client may shut down its write side once its request is sent (`nc -N`, some
        // health checkers): answer it, as nginx and Envoy do, instead of closing at the EOF.
        .half_close(true)
        .keep_alive(true)
        // Heads and small bodies copied into one buffer and written at once: fewer
        // instructions per request than queueing them for a vectored write (callgrind).
        .writev(false);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Accepts one connection and serves it in a task of `conns` that shuts it down gracefully once
/// `stop` turns true.
async fn accept_one(
    listener: &TcpListener,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    original_dst: &Arc<dyn OriginalDst>,
    proxy: &Arc<Proxy>,
    stop: &tokio::sync::watch::Receiver<bool>,
    workers: Option<&Workers>,
    conns: &mut tokio::task::JoinSet<()>,
) {
    let (stream, peer) = match listener.accept().await {
        Ok(s) => s,
        Err(error) => {
            // EMFILE and friends: back off instead of spinning; the listener stays usable.
            warn!(%error, "accepting a proxy connection failed");
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let conn = Arc::new(ConnCtx {
        original_dst: original_dst.original_dst(&stream, peer),
        source_labels: original_dst.source_labels(peer),
        source: original_dst.source_workload(peer),
        resolver: original_dst.clone(),
        proxy: proxy.clone(),
        peer,
        local,
        last_listener: Default::default(),
        close: tokio::sync::Notify::new(),
        closing: Default::default(),
    });
    let builder = builder.clone();
    let stop = stop.clone();
    let Some(workers) = workers else {
        conns.spawn(serve_connection(stream, conn, builder, stop));
        return;
    };
    let (worker, runtime) = workers.next();
    if workers::current() == Some(worker) {
        conns.spawn(serve_connection(stream, conn, builder, stop));
        return;
    }
    // A socket is registered with the runtime that created it: hand it over unregistered, to
    // be registered with the worker's own.
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(error) => {
            debug!(%peer, %error, "handing a proxy connection to a worker failed");
            return;
        }
    };
    conns.spawn_on(
        async move {
            match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => serve_connection(stream, conn, builder, stop).await,
                Err(error) => debug!(%peer, %error, "registering a proxy connection failed"),
            }
        },
        runtime,
    );
}

/// Serves one accepted connection until it ends, shutting it down gracefully once `stop`
/// turns true or the proxy asks it to close.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    conn: Arc<ConnCtx>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let peer = conn.peer;
    let stream = if conn.proxy.opts.own_http1 {
        match h1::serve(stream, &conn, &mut stop).await {
            Served::Closed => return,
            Served::HandOver(io) => io,
        }
    } else {
        Switched::new(stream, Bytes::new())
    };
    let ctx = conn.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(&conn, req.map(ClientBody::Hyper)).await) }
    });
    let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        () = async {
            // A dropped sender is a detached listener: serve on, no shutdown.
            if stop.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        } => {
            served.as_mut().graceful_shutdown();
            served.await
        }
        // Served by a listener the config dropped (`handler`).
        () = ctx.close.notified() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(error) = result {
        debug!(%peer, %error, "proxy connection ended with an error");
    }
}
