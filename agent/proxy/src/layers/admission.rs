//! Admission: the cluster's circuit breaker (`connectionPool`, see `breaker.rs`), asked before
//! every attempt as Envoy's router asks the connection pool for every try. An overflow is
//! answered at once with 503 `x-envoy-overloaded` and never retried. HTTP/2 upstreams
//! multiplex one connection per endpoint, so only the active-request limit
//! (`http2MaxRequests`) applies to them, not connection slots and pending requests.
//! Passthrough destinations have no breaker.

use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use super::super::breaker::RqGuard;
use super::super::forward::Target;
use super::super::snapshot::cluster_name;
use super::super::upstream::Proto;
use super::Reply;

/// What admission grants one attempt: its connection slot (HTTP/1 under `maxConnections`),
/// released when the connection is back in the pool, and its place among the cluster's active
/// requests, released when the response ends.
#[derive(Default)]
pub(crate) struct Admission {
    pub slot: Option<OwnedSemaphorePermit>,
    pub request: Option<RqGuard>,
    /// The attempt waited as a pending request (see [`connect_failed`]).
    pub waited: bool,
}

/// Waits as a pending request while the cluster's connection slots are all taken (HTTP/1).
pub(crate) async fn admit(target: &Target, proto: Proto) -> Result<Admission, Reply> {
    let Target::Cluster(c) = target else {
        return Ok(Admission::default());
    };
    match c.breaker.admit(proto == Proto::Http1).await {
        Ok(a) => Ok(Admission {
            slot: a.slot,
            request: Some(a.request),
            waited: a.waited,
        }),
        Err(_) => {
            debug!(cluster = %cluster_name(&c.key), "circuit breaker overflow");
            Err(Reply::Overflow)
        }
    }
}

/// The attempt's upstream connection could not be set up: a request that had waited as
/// pending counts in `upstream_rq_pending_failure_eject`, as Envoy counts the pending requests
/// it fails when their connection fails.
pub(crate) fn connect_failed(target: &Target, waited: bool) {
    if let (Target::Cluster(c), true) = (target, waited) {
        c.breaker.pending_connect_failed();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::super::snapshot::DEFAULT_CONNECT_TIMEOUT;
    use super::super::super::tests::cluster;
    use super::super::super::upstream::Endpoint;
    use super::super::testing::{cluster_rt, eventually, stat};
    use super::*;
    use meshpath_model::l7::{ConnectionPool, LoadBalancer};

    fn limited(pool: ConnectionPool) -> Target {
        let mut c = cluster(&["127.0.0.1:9".parse().unwrap()], LoadBalancer::RoundRobin);
        c.policy.connection_pool = pool;
        Target::Cluster(cluster_rt(c).0)
    }

    fn rt(t: &Target) -> &super::super::super::snapshot::ClusterRt {
        match t {
            Target::Cluster(c) => c,
            Target::Passthrough(..) => unreachable!(),
        }
    }

    #[tokio::test]
    async fn over_active_requests_is_refused_and_counted() {
        let t = limited(ConnectionPool {
            http2_max_requests: Some(1),
            ..ConnectionPool::default()
        });
        for proto in [Proto::Http1, Proto::Http2] {
            let first = admit(&t, proto).await.expect("under the limit");
            assert!(first.request.is_some());
            assert_eq!(stat(rt(&t), "upstream_rq_active"), 1);
            assert_eq!(stat(rt(&t), "circuit_breakers.default.rq_open"), 1);
            let refused = admit(&t, proto).await.err().expect("over the limit");
            assert_eq!(refused, Reply::Overflow);
            let resp = refused.response();
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()["x-envoy-overloaded"], "true");
            // The refused attempt took nothing.
            assert_eq!(stat(rt(&t), "upstream_rq_active"), 1);
            drop(first);
            assert_eq!(stat(rt(&t), "upstream_rq_active"), 0);
            admit(&t, proto).await.expect("room again");
        }
        assert_eq!(stat(rt(&t), "upstream_rq_pending_overflow"), 2);
        assert_eq!(stat(rt(&t), "upstream_rq_total"), 4);
    }

    #[tokio::test]
    async fn http1_waits_as_pending_then_overflows_past_max_pending() {
        let t = Arc::new(limited(ConnectionPool {
            max_connections: Some(1),
            http1_max_pending_requests: Some(1),
            ..ConnectionPool::default()
        }));
        let first = admit(&t, Proto::Http1).await.expect("a free slot");
        assert!(first.slot.is_some());
        let t2 = t.clone();
        let waiting = tokio::spawn(async move { admit(&t2, Proto::Http1).await.is_ok() });
        assert!(eventually(|| stat(rt(&t), "upstream_rq_pending_active") == 1).await);
        assert_eq!(
            admit(&t, Proto::Http1).await.err(),
            Some(Reply::Overflow),
            "one pending already"
        );
        assert_eq!(stat(rt(&t), "upstream_rq_pending_overflow"), 1);
        assert_eq!(stat(rt(&t), "upstream_cx_overflow"), 2);
        drop(first);
        assert!(waiting.await.unwrap(), "the pending request gets the slot");
        assert_eq!(stat(rt(&t), "upstream_rq_pending_active"), 0);
        assert_eq!(stat(rt(&t), "upstream_rq_pending_total"), 1);
    }

    #[tokio::test]
    async fn http2_needs_no_connection_slot() {
        let t = limited(ConnectionPool {
            max_connections: Some(1),
            http1_max_pending_requests: Some(0),
            ..ConnectionPool::default()
        });
        let a = admit(&t, Proto::Http2).await.expect("admitted");
        let b = admit(&t, Proto::Http2).await.expect("admitted");
        assert!(a.slot.is_none() && b.slot.is_none());
        assert_eq!(stat(rt(&t), "upstream_rq_active"), 2);
        assert_eq!(stat(rt(&t), "upstream_rq_pending_overflow"), 0);
    }

    #[tokio::test]
    async fn passthrough_has_no_breaker() {
        let ep = Arc::new(Endpoint::new("127.0.0.1:9".parse().unwrap(), None));
        let t = Target::Passthrough(ep, DEFAULT_CONNECT_TIMEOUT);
        let a = admit(&t, Proto::Http1).await.expect("always admitted");
        assert!(a.slot.is_none() && a.request.is_none());
    }
}
