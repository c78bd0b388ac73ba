//! `outlierDetection`: consecutive-error ejection, its duration, `maxEjectionPercent`, the
//! published ejected set and the `outlier_detection.*` stats.

use super::*;
use crate::{EjectedSet, ProxyStats};
use meshpath_model::l7::LoadBalancer::RoundRobin;

/// Cluster `a` (everything routes to it) over `addrs` with `od`.
fn detecting(addrs: &[SocketAddr], od: OutlierDetection) -> L7Config {
    let mut c = cluster(addrs, RoundRobin);
    c.policy.outlier_detection = Some(od);
    config(vec![route(vec![], to(&key("a")))], vec![(key("a"), c)])
}

fn od(consecutive_5xx: u32, base: Duration, max_pct: u32) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx_errors: Some(consecutive_5xx),
        consecutive_gateway_errors: None,
        // Short, so endpoints return close to their ejection time (at the next sweep).
        interval: Duration::from_millis(100),
        base_ejection_time: base,
        max_ejection_percent: max_pct,
        min_health_percent: 0,
    }
}

/// A harness that keeps the proxy's stats and its ejected-endpoint channel.
async fn start_od(cfg: L7Config) -> (Harness, ProxyStats, watch::Receiver<EjectedSet>) {
    let (tx, rx) = watch::channel(Arc::new(cfg));
    let proxy = Proxy::with_options(rx, ProxyOptions::default(), None);
    let (stats, ejected) = (proxy.stats(), proxy.ejected_endpoints());
    let dst = FixedDst {
        dst: Some(VIP),
        labels: BTreeMap::new(),
    };
    let tx = ConfigTx::new(tx, proxy.clone());
    let h = serve_harness(proxy, tx, dst).await;
    (h, stats, ejected)
}

fn stat(stats: &ProxyStats, name: &str) -> u64 {
    stats
        .values()
        .into_iter()
        .find(|(c, s, _, _)| c == "outbound|80||a.default.svc.cluster.local" && *s == name)
        .map(|(_, _, v, _)| v)
        .unwrap_or_else(|| panic!("no stat {name}"))
}

fn failing() -> Behavior {
    Arc::new(|_, _| (500, Duration::ZERO))
}

#[tokio::test]
async fn endpoint_answering_500_is_ejected_for_base_ejection_time_then_returns() {
    let bad = backend_with("bad", failing()).await;
    let (g1, g2) = (backend("g1").await, backend("g2").await);
    let base = Duration::from_millis(1500);
    let cfg = detecting(&[bad.addr, g1.addr, g2.addr], od(3, base, 100));
    let (h, stats, ejected) = start_od(cfg).await;

    // Round robin: 9 requests give `bad` its 3 consecutive 500s.
    for _ in 0..9 {
        h.get("/").await;
    }
    assert_eq!(bad.count(), 3);
    let ejected_at = tokio::time::Instant::now();
    assert!(
        ejected.borrow().contains(&bad.addr),
        "{:?}",
        ejected.borrow()
    );
    assert_eq!(stat(&stats, "outlier_detection.ejections_active"), 1);
    assert_eq!(
        stat(&stats, "outlier_detection.ejections_enforced_total"),
        1
    );
    assert_eq!(
        stat(
            &stats,
            "outlier_detection.ejections_enforced_consecutive_5xx"
        ),
        1
    );
    assert_eq!(stat(&stats, "outlier_detection.ejections_total"), 1);
    let text = stats.envoy_text();
    assert!(
        text.contains(
            "cluster.outbound|80||a.default.svc.cluster.local.outlier_detection.ejections_active: 1\n"
        ),
        "{text}"
    );

    // While ejected it gets nothing; every request succeeds on the others.
    for _ in 0..20 {
        assert_eq!(h.get("/").await.status, 200);
    }
    assert_eq!(bad.count(), 3);
    assert!(
        ejected_at.elapsed() < base,
        "test too slow to observe the ejection"
    );

    // Back after baseEjectionTime (× 1: first ejection).
    tokio::time::sleep(base + Duration::from_millis(200)).await;
    assert!(ejected.borrow().is_empty());
    assert_eq!(stat(&stats, "outlier_detection.ejections_active"), 0);
    for _ in 0..6 {
        h.get("/").await;
    }
    assert!(bad.count() > 3, "ejected endpoint never came back");
    assert_eq!(
        stat(&stats, "outlier_detection.ejections_enforced_total"),
        1
    );
}

#[tokio::test]
async fn ejected_endpoint_returns_at_the_next_interval_sweep() {
    let bad = backend_with("bad", failing()).await;
    let good = backend("good").await;
    let mut o = od(1, Duration::from_millis(300), 100);
    o.interval = Duration::from_secs(1);
    let (h, stats, ejected) = start_od(detecting(&[bad.addr, good.addr], o)).await;
    // The cluster's sweep ticks 1 s after its first result, here the first request.
    let first = tokio::time::Instant::now();
    for _ in 0..2 {
        h.get("/").await;
    }
    assert!(ejected.borrow().contains(&bad.addr));
    // Its 300 ms are up, but no sweep has run yet.
    tokio::time::sleep_until(first + Duration::from_millis(700)).await;
    assert!(
        ejected.borrow().contains(&bad.addr),
        "returned before the sweep"
    );
    assert_eq!(stat(&stats, "outlier_detection.ejections_active"), 1);
    tokio::time::sleep_until(first + Duration::from_millis(1250)).await;
    assert!(ejected.borrow().is_empty(), "not returned at the sweep");
    assert_eq!(stat(&stats, "outlier_detection.ejections_active"), 0);
}

#[tokio::test]
async fn second_ejection_lasts_twice_as_long() {
    let bad = backend_with("bad", failing()).await;
    let good = backend("good").await;
    let base = Duration::from_millis(600);
    let mut o = od(1, base, 100);
    o.interval = Duration::from_millis(200);
    let (h, _stats, mut ejected) = start_od(detecting(&[bad.addr, good.addr], o)).await;
    // Ejects `bad` and returns how long it stayed out.
    let mut ejection = async || {
        while !ejected.borrow().contains(&bad.addr) {
            h.get("/").await;
        }
        let at = tokio::time::Instant::now();
        while !ejected.borrow_and_update().is_empty() {
            ejected.changed().await.unwrap();
        }
        at.elapsed()
    };
    let first = ejection().await;
    // Ejected again at once (before an interval passes, so the multiplier does not decay).
    let second = ejection().await;
    // Each ends at the first sweep after its time: up to one interval late.
    let late = Duration::from_millis(200 + 100);
    // (`at` is taken just after the ejection: allow that much early.)
    let early = Duration::from_millis(20);
    assert!(first + early >= base && first < base + late, "{first:?}");
    assert!(
        second + early >= 2 * base && second < 2 * base + late,
        "{second:?}"
    );
}

#[tokio::test]
async fn max_ejection_percent_caps_ejections() {
    let b1 = backend_with("b1", failing()).await;
    let b2 = backend_with("b2", failing()).await;
    let b3 = backend_with("b3", failing()).await;
    // floor(3 × 50%) = 1 endpoint may be ejected.
    let cfg = detecting(
        &[b1.addr, b2.addr, b3.addr],
        od(1, Duration::from_secs(30), 50),
    );
    let (h, stats, ejected) = start_od(cfg).await;
    for _ in 0..12 {
        assert_eq!(h.get("/").await.status, 500);
    }
    assert_eq!(ejected.borrow().len(), 1);
    assert_eq!(stat(&stats, "outlier_detection.ejections_active"), 1);
    assert_eq!(
        stat(&stats, "outlier_detection.ejections_enforced_total"),
        1
    );
    assert!(stat(&stats, "outlier_detection.ejections_overflow") > 0);
    assert!(stat(&stats, "outlier_detection.ejections_total") > 1);
}

#[tokio::test]
async fn one_endpoint_is_ejectable_whatever_the_percent() {
    let bad = backend_with("bad", failing()).await;
    let good = backend("good").await;
    // floor(2 × 10%) = 0, but Envoy always allows one ejection.
    let cfg = detecting(&[bad.addr, good.addr], od(2, Duration::from_secs(30), 10));
    let (h, _stats, ejected) = start_od(cfg).await;
    for _ in 0..4 {
        h.get("/").await;
    }
    assert!(ejected.borrow().contains(&bad.addr));
    for _ in 0..10 {
        assert_eq!(h.get("/").await.status, 200);
    }
}

#[tokio::test]
async fn connect_failures_count_as_gateway_errors() {
    let dead = dead_addr().await;
    let good = backend("good").await;
    let mut o = od(0, Duration::from_secs(30), 100);
    o.consecutive_5xx_errors = None;
    o.consecutive_gateway_errors = Some(2);
    let (h, stats, ejected) = start_od(detecting(&[dead, good.addr], o)).await;
    // Istio's default retries move each failed connect to `good`.
    for _ in 0..6 {
        assert_eq!(h.get("/").await.status, 200);
    }
    assert!(ejected.borrow().contains(&dead));
    assert_eq!(
        stat(
            &stats,
            "outlier_detection.ejections_enforced_consecutive_gateway_failure"
        ),
        1
    );
}

#[tokio::test]
async fn min_health_percent_ignores_ejections_when_too_few_are_left() {
    let bad = backend_with("bad", failing()).await;
    let good = backend("good").await;
    let mut o = od(1, Duration::from_secs(30), 100);
    // With one of two ejected only 50% are healthy: below 60%, balancing ignores ejections.
    o.min_health_percent = 60;
    let (h, _stats, ejected) = start_od(detecting(&[bad.addr, good.addr], o)).await;
    for _ in 0..2 {
        h.get("/").await;
    }
    assert!(ejected.borrow().contains(&bad.addr));
    let before = bad.count();
    for _ in 0..6 {
        h.get("/").await;
    }
    assert!(
        bad.count() > before,
        "panic mode should still use the ejected endpoint"
    );
}

#[tokio::test]
async fn ejection_survives_a_config_swap() {
    let bad = backend_with("bad", failing()).await;
    let good = backend("good").await;
    let cfg = detecting(&[bad.addr, good.addr], od(1, Duration::from_secs(30), 100));
    let (h, _stats, ejected) = start_od(cfg.clone()).await;
    for _ in 0..2 {
        h.get("/").await;
    }
    assert!(ejected.borrow().contains(&bad.addr));
    let before = bad.count();
    h.tx.send_replace(Arc::new(cfg));
    for _ in 0..6 {
        assert_eq!(h.get("/").await.status, 200);
    }
    assert_eq!(bad.count(), before);
}
