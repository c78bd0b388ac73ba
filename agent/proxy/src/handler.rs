//! One request through the proxy, in Envoy's filter order for an Istio sidecar: request id
//! and trace headers, then the layers (see `layers`): route selection, fault injection, then
//! the router (redirect, direct response, or upstream with rewrite, header operations, mirror,
//! and `forward`'s per-attempt layers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, SET_COOKIE};
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use tokio::time::Instant;
use tracing::debug;

use super::body::{local_reply, ClientBody, ProxyBody};
use super::forward::{forward, Forward, ReqBody, RetryRt, Target};
use super::hashkey::{request_hash, RequestHash};
use super::headers::{self, finalize_head, strip_hop_by_hop};
use super::istio_metrics;
use super::layers::{self, route::Selected};
use super::matching::Matcher;
use super::snapshot::ClusterId;
use super::snapshot::DestOps;
use super::snapshot::{ClusterRt, ListenerRt, RouteRt, Snapshot};
use super::trace::{self, Span};
use super::upstream::Proto;
use super::workload::Workload;
use super::{operation, redirect, rewrite, upgrade, Proxy};
use meshpath_model::l7::{LoadBalancer, RouteAction};

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// One downstream connection, shared by its requests.
pub(crate) struct ConnCtx {
    pub proxy: Arc<Proxy>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub original_dst: Option<SocketAddr>,
    pub source_labels: super::Labels,
    pub source: Option<Arc<Workload>>,
    /// Finds the workload of an upstream endpoint too (destination labels of the metrics).
    pub resolver: Arc<dyn super::OriginalDst>,
    /// The listener of the connection's last request: it keeps serving the connection (as
    /// plain forwarding) after a config drops it, as long as the client keeps the connection.
    pub last_listener: arc_swap::ArcSwapOption<ListenerRt>,
    /// Asks the connection to close once its requests are answered (HTTP/2: GOAWAY).
    pub close: tokio::sync::Notify,
    /// Whether it was asked to (logged once).
    pub closing: std::sync::atomic::AtomicBool,
}

impl ConnCtx {
    /// The listener that serves a request when `snap` has none for the connection's original
    /// destination (it was dropped): the one retired in `snap`, else the connection's last.
    /// Remembers the current listener otherwise (a pointer comparison per request).
    fn dropped_listener(&self, snap: &Snapshot) -> Option<Arc<ListenerRt>> {
        let orig = self.original_dst?;
        match snap.listeners.get(&orig) {
            Some(current) => {
                let last = self.last_listener.load();
                if !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, current)) {
                    self.last_listener.store(Some(current.clone()));
                }
                None
            }
            None => snap
                .retired
                .get(&orig)
                .map(|r| r.listener.clone())
                .or_else(|| self.last_listener.load_full()),
        }
    }
}

/// What routing decided, for the span (borrowed from the snapshot: no copy unless exported).
#[derive(Default)]
struct Routed<'a> {
    /// The route and which of its matches selected it (the span's operation name).
    route: Option<(&'a RouteRt, Option<&'a Matcher>)>,
    cluster: Option<&'a ClusterId>,
    upstream: Option<SocketAddr>,
    /// Envoy's response flag for a reply the proxy made itself, `None` for `-`.
    flags: Option<&'static str>,
    /// The route's CORS policy and the allowed origin its response must name.
    cors: Option<(&'a layers::cors::CorsRt, HeaderValue)>,
}

impl Routed<'_> {
    fn reply(&mut self, reply: layers::Reply) -> Response<ProxyBody> {
        self.flags = Some(reply.flag());
        reply.response()
    }
}

pub(crate) async fn handle(conn: &ConnCtx, req: Request<ClientBody>) -> Response<ProxyBody> {
    let proxy = &*conn.proxy;
    let (mut head, body) = req.into_parts();
    let sampling = conn
        .source
        .as_ref()
        .and_then(|w| w.trace_sampling)
        .unwrap_or(proxy.opts.trace_sampling);
    let sampled = trace::ensure_headers(&mut head.headers, sampling);
    // Span fields are copied only when a span will actually be exported.
    let span = match &proxy.exporter {
        Some(_) if sampled => {
            let h =
                |name: &http::header::HeaderName| head.headers.get(name).map(trace::value_string);
            Some(Span {
                trace_id: h(&trace::X_B3_TRACEID).unwrap_or_default(),
                span_id: h(&trace::X_B3_SPANID).unwrap_or_default(),
                parent_span_id: h(&trace::X_B3_PARENTSPANID),
                request_id: h(&trace::X_REQUEST_ID),
                start: SystemTime::now(),
                duration: Duration::ZERO,
                method: head.method.to_string(),
                user_agent: head
                    .headers
                    .get(http::header::USER_AGENT)
                    .map(trace::value_string),
                request_size: 0,
                response_size: 0,
                authority: trace::value_string(&headers::authority(&head)),
                path: head
                    .uri
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
                protocol: if head.version == Version::HTTP_2 {
                    "HTTP/2"
                } else {
                    "HTTP/1.1"
                },
                status: 0,
                upstream_cluster: None,
                upstream_addr: None,
                response_flags: "-",
                operation: String::new(),
                original_dst: conn.original_dst,
                peer: conn.peer,
                source: conn.source.clone(),
            })
        }
        _ => None,
    };
    let request_bytes = content_length(&head.headers);
    let t0 = Instant::now();
    let snap = proxy.snapshot();
    let dropped = conn.dropped_listener(&snap);
    let http2 = head.version == Version::HTTP_2;
    let mut routed = Routed::default();
    let mut resp = route(conn, &snap, dropped.as_deref(), head, body, &mut routed).await;
    if dropped.is_some() {
        // Its frontend is not steered here any more: the client's next connection goes where
        // the kernel sends it now.
        if !http2 {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if !conn
            .closing
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::debug!(peer = %conn.peer, original_dst = ?conn.original_dst,
                "served by the listener a config dropped; asking the client to reconnect");
        }
        conn.close.notify_one();
    }
    if let Some((cors, origin)) = routed.cors.take() {
        cors.decorate(origin, resp.headers_mut());
    }
    if routed.flags == Some(layers::Reply::ClusterNotFound.flag()) {
        let port = conn.original_dst.map_or(0, |d| d.port());
        proxy.router_stats.count_no_cluster(port);
    }
    let elapsed = t0.elapsed();
    // Known when the upstream said (content-length) or the proxy replied itself.
    let response_bytes = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
    let source = proxy.metrics.side(conn.source.as_deref());
    let dest_workload = routed
        .upstream
        .and_then(|a| conn.resolver.source_workload(a));
    let destination = proxy.metrics.side(dest_workload.as_deref());
    proxy.metrics.observe(&istio_metrics::Observation {
        source,
        destination,
        cluster: routed.cluster.map(|c| c.labels()),
        status: resp.status().as_u16(),
        flags: routed.flags.unwrap_or("-"),
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        request_bytes,
        response_bytes,
    });
    if let (Some(mut span), Some(exporter)) = (span, &proxy.exporter) {
        span.duration = elapsed;
        span.status = resp.status().as_u16();
        span.upstream_cluster = routed.cluster.map(|c| c.envoy_name().to_string());
        span.operation = match (routed.route, conn.original_dst) {
            (Some((route, matcher)), Some(d)) => operation::of(route, matcher, d.port()),
            _ => operation::undecorated(&span.authority),
        };
        span.request_size = request_bytes;
        span.response_size = response_bytes;
        span.upstream_addr = routed.upstream;
        span.response_flags = routed.flags.unwrap_or("-");
        exporter.export(span);
    }
    resp
}

/// The route layer, then fault injection, then the route's action.
async fn route<'a>(
    conn: &ConnCtx,
    snap: &'a Snapshot,
    dropped: Option<&'a ListenerRt>,
    head: Parts,
    body: ClientBody,
    routed: &mut Routed<'a>,
) -> Response<ProxyBody> {
    let proxy = &*conn.proxy;
    let authority = headers::authority(&head);
    let client = layers::route::Client {
        labels: &conn.source_labels,
        namespace: conn.source.as_ref().map(|w| w.namespace.as_str()),
    };
    let selected = layers::route::select(
        snap,
        dropped,
        conn.original_dst,
        conn.local,
        &client,
        &head,
        &authority,
    );
    let (route, matcher, orig) = match selected {
        Ok(Selected::Route {
            route,
            matcher,
            original_dst,
        }) => {
            routed.route = Some((route, matcher));
            (route, matcher, original_dst)
        }
        Ok(Selected::Passthrough(orig)) => {
            let ep = proxy.passthrough_endpoint(orig);
            let target = Target::Passthrough(ep, super::snapshot::DEFAULT_CONNECT_TIMEOUT);
            return send(
                conn,
                &proxy.passthrough_route,
                None,
                None,
                target,
                head,
                body,
                authority,
                routed,
            )
            .await;
        }
        Err(reply) => return routed.reply(reply),
    };
    // The destination is drawn when the route is chosen, before its faults, as Envoy resolves
    // the route's cluster before its filters run: a fault-aborted request is reported against
    // the service it was routed to (Istio's `destination_service`, Kiali's edge).
    let dest = match &route.route.action {
        RouteAction::Route(_) => Some(layers::route::destination(route)),
        _ => None,
    };
    if let Some(Ok(d)) = &dest {
        routed.cluster = Some(&d.key);
    }
    if let Some(fault) = &route.route.fault {
        let grpc = layers::fault::is_grpc(&head.headers);
        if let Err(reply) = layers::fault::inject(Some(fault), grpc).await {
            return routed.reply(reply);
        }
    }
    // After faults, as in Istio's filter chain (fault, then CORS): an injected abort or delay
    // applies to preflights too, and an abort carries no CORS grant.
    if let Some(cors) = &route.cors {
        match cors.check(&head) {
            Ok(origin) => routed.cors = origin.map(|o| (cors, o)),
            Err(preflight) => return *preflight,
        }
    }
    let mut resp = match &route.route.action {
        RouteAction::Redirect(r) => redirect::redirect(r, &head, &authority),
        RouteAction::DirectResponse { .. } => direct_reply(route),
        RouteAction::Route(_) => {
            let dest = match dest.unwrap_or_else(|| layers::route::destination(route)) {
                Ok(d) => d,
                Err(reply) => return routed.reply(reply),
            };
            let target = match layers::route::target(dest, || proxy.passthrough_endpoint(orig)) {
                Ok(t) => t,
                Err(reply) => return routed.reply(reply),
            };
            let ops = dest.ops.as_deref();
            return send(
                conn, route, matcher, ops, target, head, body, authority, routed,
            )
            .await;
        }
    };
    route.resp_ops.apply(resp.headers_mut());
    resp
}

#[allow(clippy::too_many_arguments)] // one call site per kind of target; a struct would only rename these
async fn send(
    conn: &ConnCtx,
    route: &RouteRt,
    matcher: Option<&Matcher>,
    dest_ops: Option<&DestOps>,
    target: Target,
    mut head: Parts,
    body: ClientBody,
    mut authority: HeaderValue,
    routed: &mut Routed<'_>,
) -> Response<ProxyBody> {
    let proxy = &*conn.proxy;
    let upgrade = prepare_head(route, matcher, dest_ops, &mut head, &mut authority);
    let hash = match &target {
        Target::Cluster(c) => cluster_hash(c, &head, conn.peer),
        Target::Passthrough(..) => RequestHash {
            hash: None,
            set_cookie: None,
        },
    };
    let proto = if head.version == Version::HTTP_2 {
        Proto::Http2
    } else {
        Proto::Http1
    };
    finalize_head(&mut head, &authority, proto);
    let downstream_upgrade = if upgrade {
        head.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };

    let mirrors = layers::mirror::roll_for(route, upgrade);
    let replay = !upgrade && (route.retry.retries > 0 || !mirrors.is_empty());
    let body = match ReqBody::new(body, replay, proxy.opts.max_buffered_body).await {
        Ok(b) => b,
        Err(error) => {
            debug!(%error, "client request body failed");
            return local_reply(StatusCode::BAD_REQUEST, "");
        }
    };
    for m in mirrors {
        m.send(
            proxy,
            &head,
            &authority,
            &body,
            hash.hash,
            proto,
            route.route.timeout,
        );
    }
    // A WebSocket handshake is never retried: its request is the start of a stream.
    let no_retry = RetryRt::none();
    let (mut resp, upstream) = forward(Forward {
        target,
        head,
        body,
        proto,
        retry: if upgrade { &no_retry } else { &route.retry },
        timeout: route.route.timeout,
        hash: hash.hash,
        max_idle: proxy.opts.max_idle_per_endpoint,
    })
    .await;
    routed.upstream = upstream;
    if let Some(f) = resp.extensions().get::<super::forward::ResponseFlag>() {
        routed.flags = Some(f.0);
    }
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(resp.headers_mut(), upgrade && switching);
    if let (true, Some(down)) = (switching, downstream_upgrade) {
        upgrade::tunnel(down, &mut resp);
    }
    if let Some(o) = dest_ops {
        o.resp.apply(resp.headers_mut());
    }
    route.resp_ops.apply(resp.headers_mut());
    if let Some(cookie) = hash.set_cookie {
        resp.headers_mut().append(SET_COOKIE, cookie);
    }
    resp
}

/// The request head as the route sends it upstream (before the per-protocol finishing of
/// `finalize_head`): the route's rewrite, its authority and header operations, hop-by-hop
/// headers removed. Returns whether the request is a protocol upgrade (WebSocket).
/// A `directResponse` route's answer, built once per snapshot (`RouteRt::direct`).
pub(crate) fn direct_reply(route: &RouteRt) -> Response<ProxyBody> {
    let (status, body) = route
        .direct
        .clone()
        .unwrap_or((StatusCode::INTERNAL_SERVER_ERROR, Bytes::new()));
    local_reply(status, body)
}

pub(crate) fn prepare_head(
    route: &RouteRt,
    matcher: Option<&Matcher>,
    dest_ops: Option<&DestOps>,
    head: &mut Parts,
    authority: &mut HeaderValue,
) -> bool {
    if let Some(rw) = &route.route.rewrite {
        rewrite::path(rw, matcher, head);
        if let Some(a) = rw
            .authority
            .as_deref()
            .and_then(|a| HeaderValue::try_from(a).ok())
        {
            *authority = a;
        }
    }
    // Envoy's order: the destination's operations, then the route's (the less specific wins).
    if let Some(a) = dest_ops.and_then(|o| o.req.authority.as_ref()) {
        *authority = a.clone();
    }
    if let Some(a) = &route.req_ops.authority {
        *authority = a.clone();
    }
    let upgrade = upgrade::is_upgrade(head);
    strip_hop_by_hop(&mut head.headers, upgrade);
    if let Some(o) = dest_ops {
        o.req.apply(&mut head.headers);
    }
    route.req_ops.apply(&mut head.headers);
    // One lookup: kept when the client set it, added otherwise.
    head.headers
        .entry(X_FORWARDED_PROTO.clone())
        .or_insert_with(|| HeaderValue::from_static("http"));
    upgrade
}

pub(crate) fn cluster_hash(c: &ClusterRt, head: &Parts, peer: SocketAddr) -> RequestHash {
    match &c.policy.load_balancer {
        LoadBalancer::ConsistentHash { key, .. } => {
            request_hash(key, &head.headers, head.uri.query(), peer)
        }
        _ => RequestHash {
            hash: None,
            set_cookie: None,
        },
    }
}

fn content_length(h: &http::HeaderMap) -> u64 {
    h.get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
