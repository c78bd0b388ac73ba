//! Shared by the layers' unit tests: runtime cluster state built the way a config snapshot
//! builds it, the cluster's stats, and a real stale-connection error from a loopback peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::super::breaker::StatsMap;
use super::super::outlier::Outliers;
use super::super::snapshot::{self, ClusterRt, Registry, Snapshot};
use super::super::tests::{config, key, route, to};
use super::super::upstream::UpstreamError;
use meshpath_model::l7::{Cluster, L7Config};

/// A snapshot of `cfg`, and the outlier state it records into.
pub(crate) fn snapshot_of(cfg: L7Config) -> (Snapshot, Arc<Outliers>) {
    let outliers = Outliers::new();
    let snap = snapshot::build(
        Arc::new(cfg),
        None,
        &mut Registry::new(),
        &mut StatsMap::new(),
        &outliers,
    );
    (snap, outliers)
}

/// Cluster `a` as a snapshot builds it from `c` (everything routes to it).
pub(crate) fn cluster_rt(c: Cluster) -> (Arc<ClusterRt>, Arc<Outliers>) {
    let (snap, outliers) = snapshot_of(config(
        vec![route(vec![], to(&key("a")))],
        vec![(key("a"), c)],
    ));
    let listener = snap.listeners.values().next().expect("one listener");
    let cluster = listener.routes[0].dests[0]
        .0
        .cluster
        .clone()
        .expect("defined");
    (cluster, outliers)
}

/// One of the cluster's stats, by Envoy name.
pub(crate) fn stat(c: &ClusterRt, name: &str) -> u64 {
    c.breaker
        .stats
        .values()
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, v, _)| v)
        .unwrap_or_else(|| panic!("no stat {name}"))
}

/// The error of a request sent on a kept-alive connection that its peer closed as the request
/// arrived (a real one, from a loopback peer that reads the request and hangs up).
pub(crate) async fn stale_error() -> UpstreamError {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let conn = crate::h1::Conn::new(stream, 0, None);
    let (head, ()) = Request::get("/")
        .header("host", "a")
        .body(())
        .unwrap()
        .into_parts();
    let Err(failed) = crate::h1::send(conn, &head, crate::body::UpBody::Full(None)).await else {
        panic!("a peer that hangs up gave an answer");
    };
    peer.await.unwrap();
    assert!(
        matches!(failed.error, crate::h1::SendError::Closed),
        "{:?}",
        failed.error
    );
    UpstreamError::Reset {
        addr,
        reused: true,
        source: failed.error.into(),
    }
}

/// A connect failure (no TCP connection).
pub(crate) fn connect_error(addr: SocketAddr) -> UpstreamError {
    UpstreamError::ConnectTimeout {
        addr,
        timeout: Duration::from_millis(1),
    }
}

/// Waits up to 2 s for `cond`, checking every 5 ms.
pub(crate) async fn eventually(cond: impl Fn() -> bool) -> bool {
    for _ in 0..400 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}
