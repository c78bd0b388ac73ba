//! Span export off the request path: [`Exporter::export`] only `try_send`s into a bounded
//! queue (a full queue drops the span and counts it); one task drains it in batches and POSTs
//! each batch to the collector, Zipkin v2 JSON (`/api/v2/spans`) or OTLP/HTTP JSON
//! (`/v1/traces`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::trace::{Span, SpanExporter};
pub use crate::zipkin::TraceMeta;
use crate::{otlp, zipkin};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Zipkin,
    Otlp,
}

#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// The collector's URL: `http://host:port` (the format's path is added) or a full URL.
    pub collector: Uri,
    pub format: Format,
    pub meta: TraceMeta,
    /// Spans waiting for export; more are dropped.
    pub queue: usize,
    /// Largest batch per POST.
    pub batch: usize,
    /// A partial batch is sent after this long.
    pub flush: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("collector URL {url}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("connecting to the collector at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with the collector")]
    Http(#[source] hyper::Error),
    #[error("building the request")]
    Request(#[source] http::Error),
    #[error("the collector answered {status}")]
    Status { status: u16 },
}

/// Counters of what export did, readable while it runs.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub exported: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Lost in a failed POST.
    pub failed: AtomicU64,
}

pub struct Exporter {
    tx: mpsc::Sender<Span>,
    stats: Arc<ExportStats>,
}

impl Exporter {
    /// Starts the export task on the current tokio runtime.
    pub fn start(opts: ExportOptions) -> Result<Arc<Exporter>, ExportError> {
        let target = Target::new(&opts.collector, opts.format)?;
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let stats = Arc::new(ExportStats::default());
        tokio::spawn(run(rx, opts, target, stats.clone()));
        Ok(Arc::new(Exporter { tx, stats }))
    }

    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }
}

impl SpanExporter for Exporter {
    fn export(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where batches are POSTed.
struct Target {
    addr: String,
    authority: String,
    path: String,
}

impl Target {
    fn new(url: &Uri, format: Format) -> Result<Target, ExportError> {
        let bad = |reason| ExportError::Url {
            url: url.to_string(),
            reason,
        };
        if url.scheme_str() != Some("http") {
            return Err(bad("only http:// collectors are supported"));
        }
        let authority = url.authority().ok_or_else(|| bad("no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let path = match url.path() {
            "" | "/" => match format {
                Format::Zipkin => "/api/v2/spans",
                Format::Otlp => "/v1/traces",
            },
            p => p,
        };
        Ok(Target {
            addr: format!("{}:{port}", authority.host()),
            authority: authority.to_string(),
            path: path.to_owned(),
        })
    }
}

async fn run(
    mut rx: mpsc::Receiver<Span>,
    opts: ExportOptions,
    target: Target,
    stats: Arc<ExportStats>,
) {
    let mut batch = Vec::with_capacity(opts.batch);
    loop {
        // Wait for a first span, then fill the batch until full or the flush interval ends.
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + opts.flush;
        while batch.len() < opts.batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let body = match opts.format {
            Format::Zipkin => zipkin::encode(&batch, &opts.meta),
            Format::Otlp => otlp::encode(&batch, &opts.meta),
        };
        let n = batch.len() as u64;
        match post(&target, body).await {
            Ok(()) => stats.exported.fetch_add(n, Ordering::Relaxed),
            Err(error) => {
                tracing::warn!(%error, spans = n, collector = %target.addr, "span export failed");
                stats.failed.fetch_add(n, Ordering::Relaxed)
            }
        };
        batch.clear();
    }
}

/// One POST on a fresh connection: batches are rare next to requests, and a fresh connection
/// survives collector restarts without pool bookkeeping.
async fn post(target: &Target, body: Vec<u8>) -> Result<(), ExportError> {
    let stream = TcpStream::connect(&target.addr)
        .await
        .map_err(|source| ExportError::Connect {
            addr: target.addr.clone(),
            source,
        })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ExportError::Http)?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri(target.path.as_str())
        .header(http::header::HOST, target.authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(ExportError::Request)?;
    let resp = send.send_request(req).await.map_err(ExportError::Http)?;
    let status = resp.status();
    // Drain the body so the collector sees a complete exchange.
    let _ = resp.into_body().collect().await;
    if !status.is_success() {
        return Err(ExportError::Status {
            status: status.as_u16(),
        });
    }
    Ok(())
}
