//! Outlier recording: every attempt's result goes to its cluster's `outlierDetection`
//! (`outlier.rs`), retried ones included as in Envoy, except a pooled connection the peer had
//! closed as the request went out: that says nothing of the endpoint. Connect failures and
//! resets count as 503, per-try timeouts as 504. Only the cluster's own detector state is
//! locked, never one shared by all clusters.

use std::net::SocketAddr;

use super::super::forward::Target;
use super::super::outlier::Attempt;
use super::Attempted;

pub(crate) fn record(target: &Target, addr: SocketAddr, result: Attempted<'_>) {
    let Target::Cluster(c) = target else {
        return;
    };
    let Some(detector) = &c.outlier else {
        return;
    };
    let attempt = match result {
        Attempted::Status(s) => Attempt::Status(s),
        Attempted::Failed(e) if e.is_stale_connection() => return,
        Attempted::Failed(_) => Attempt::Failed,
        Attempted::TimedOut => Attempt::TimedOut,
    };
    detector.record(addr, attempt, c.endpoints.len());
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::super::super::snapshot::{ClusterRt, DEFAULT_CONNECT_TIMEOUT};
    use super::super::super::tests::cluster;
    use super::super::super::upstream::Endpoint;
    use super::super::testing::{cluster_rt, connect_error, stale_error, stat};
    use super::*;
    use meshpath_model::l7::{LoadBalancer, OutlierDetection};

    const EJECTED_5XX: &str = "outlier_detection.ejections_enforced_consecutive_5xx";
    const EJECTED_GATEWAY: &str =
        "outlier_detection.ejections_enforced_consecutive_gateway_failure";

    fn addrs() -> [SocketAddr; 2] {
        [
            "127.0.0.1:21000".parse().unwrap(),
            "127.0.0.1:21001".parse().unwrap(),
        ]
    }

    fn detecting(od: OutlierDetection) -> (Target, std::sync::Arc<ClusterRt>) {
        let mut c = cluster(&addrs(), LoadBalancer::RoundRobin);
        c.policy.outlier_detection = Some(OutlierDetection {
            interval: Duration::from_secs(60),
            base_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 100,
            ..od
        });
        let (rt, _) = cluster_rt(c);
        (Target::Cluster(rt.clone()), rt)
    }

    fn ejected(rt: &ClusterRt) -> Vec<bool> {
        let od = rt.outlier.as_ref().unwrap();
        od.ejected_mask(rt.endpoints.iter().map(|e| e.addr))
            .unwrap_or_else(|| vec![false; rt.endpoints.len()])
    }

    #[tokio::test]
    async fn consecutive_5xx_eject_and_a_success_resets_the_run() {
        let (t, rt) = detecting(OutlierDetection {
            consecutive_5xx_errors: Some(3),
            ..OutlierDetection::default()
        });
        let [a, b] = addrs();
        record(&t, a, Attempted::Status(500));
        record(&t, a, Attempted::Status(503));
        record(&t, a, Attempted::Status(200));
        record(&t, a, Attempted::Status(500));
        record(&t, a, Attempted::Status(501));
        // Other endpoints' results are theirs.
        record(&t, b, Attempted::Status(200));
        assert_eq!(ejected(&rt), [false, false]);
        record(&t, a, Attempted::Status(599));
        assert_eq!(ejected(&rt), [true, false]);
        assert_eq!(stat(&rt, EJECTED_5XX), 1);
        assert_eq!(stat(&rt, "outlier_detection.ejections_active"), 1);
    }

    #[tokio::test]
    async fn gateway_errors_count_failures_and_timeouts() {
        let (t, rt) = detecting(OutlierDetection {
            consecutive_gateway_errors: Some(3),
            ..OutlierDetection::default()
        });
        let [a, b] = addrs();
        record(&t, a, Attempted::Status(502));
        let refused = connect_error(a);
        record(&t, a, Attempted::Failed(&refused));
        // A non-gateway 5xx breaks the gateway run.
        record(&t, a, Attempted::Status(500));
        record(&t, a, Attempted::Status(504));
        record(&t, a, Attempted::Failed(&refused));
        assert_eq!(ejected(&rt), [false, false]);
        record(&t, a, Attempted::TimedOut);
        assert_eq!(ejected(&rt), [true, false]);
        assert_eq!(stat(&rt, EJECTED_GATEWAY), 1);
        assert_eq!(stat(&rt, EJECTED_5XX), 0);
        record(&t, b, Attempted::Status(503));
        assert_eq!(ejected(&rt), [true, false]);
    }

    #[tokio::test]
    async fn a_stale_pooled_connection_is_not_the_endpoints_fault() {
        let (t, rt) = detecting(OutlierDetection {
            consecutive_5xx_errors: Some(1),
            ..OutlierDetection::default()
        });
        let stale = stale_error().await;
        let [a, _] = addrs();
        record(&t, a, Attempted::Failed(&stale));
        assert_eq!(ejected(&rt), [false, false]);
        assert_eq!(stat(&rt, "outlier_detection.ejections_total"), 0);
        record(&t, a, Attempted::Status(500));
        assert_eq!(ejected(&rt), [true, false]);
    }

    #[tokio::test]
    async fn targets_without_detection_record_nothing() {
        let (rt, _) = cluster_rt(cluster(&addrs(), LoadBalancer::RoundRobin));
        assert!(rt.outlier.is_none());
        let t = Target::Cluster(rt.clone());
        for _ in 0..10 {
            record(&t, addrs()[0], Attempted::Status(500));
        }
        assert_eq!(stat(&rt, "outlier_detection.ejections_total"), 0);
        let ep = std::sync::Arc::new(Endpoint::new(addrs()[0], None));
        let pass = Target::Passthrough(ep, DEFAULT_CONNECT_TIMEOUT);
        record(&pass, addrs()[0], Attempted::Status(500));
    }
}
