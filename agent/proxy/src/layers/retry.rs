//! Retrying: after each attempt, whether to make another. Another attempt needs the route's
//! `retryOn` to cover the result (`retry.rs`), an attempt left (`attempts` counts retries
//! after the first), a body that can be sent again, and room in the cluster's retry budget
//! (`maxRetries` outstanding retries; over it the client gets this attempt's answer and
//! `upstream_rq_retry_overflow` counts it). A retry waits Envoy's jittered back-off and prefers
//! endpoints not tried yet. Separately, an idempotent request that met a pooled connection its
//! peer had just closed is sent again once, at once and uncounted (as Go's HTTP client does).

use std::time::Duration;

use http::Method;
use tracing::debug;

use super::super::breaker::{Breaker, RetryGuard};
use super::super::forward::Target;
use super::super::retry::RetryRt;
use super::super::snapshot::cluster_name;
use super::Attempted;
use meshpath_model::l7::ClusterKey;

/// What follows an attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// The same attempt again on a fresh connection, now (a stale pooled connection).
    Resend,
    /// A retry, after this back-off.
    Retry(Duration),
    /// This attempt's result is the answer.
    Done,
}

/// One request's retry state.
pub(crate) struct Retry<'a> {
    policy: &'a RetryRt,
    /// The cluster's budget (`maxRetries`); passthrough has none.
    budget: Option<(&'a Breaker, &'a ClusterKey)>,
    idempotent: bool,
    attempt: u32,
    stale_resent: bool,
    /// The retry in progress, counted against `maxRetries` until its attempt has a result
    /// (Envoy releases it when it decides on that result).
    outstanding: Option<RetryGuard>,
    /// Endpoint indices used by earlier attempts; allocated only when a retry happens.
    tried: Vec<usize>,
}

impl<'a> Retry<'a> {
    pub(crate) fn new(policy: &'a RetryRt, target: &'a Target, method: &Method) -> Retry<'a> {
        Retry {
            policy,
            budget: match target {
                Target::Cluster(c) => Some((&c.breaker, &*c.key)),
                Target::Passthrough(..) => None,
            },
            idempotent: matches!(
                *method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            ),
            attempt: 0,
            stale_resent: false,
            outstanding: None,
            tried: Vec::new(),
        }
    }

    /// Starts an attempt: its number, from 1 (a resend keeps the number).
    pub(crate) fn begin(&mut self) -> u32 {
        self.attempt += 1;
        self.attempt
    }

    /// The current attempt may be followed by a retry (so its request must be kept).
    pub(crate) fn may_retry(&self) -> bool {
        self.attempt <= self.policy.retries
    }

    pub(crate) fn per_try_timeout(&self) -> Option<Duration> {
        self.policy.per_try_timeout
    }

    pub(crate) fn tried(&self) -> &[usize] {
        &self.tried
    }

    /// Decides on the current attempt's `result`, which went to endpoint `idx`;
    /// `body_available` says whether the request body can still be sent.
    pub(crate) fn after(
        &mut self,
        result: Attempted<'_>,
        idx: usize,
        body_available: bool,
    ) -> Next {
        let more = self.may_retry();
        let retriable = match result {
            Attempted::Status(s) => self.policy.on_status(s),
            Attempted::Failed(e) => self.policy.on_error(e),
            Attempted::TimedOut => self.policy.on_timeout(),
        };
        let mut retry = more && body_available && retriable;
        let previous = self.outstanding.take();
        let stale = matches!(result, Attempted::Failed(e) if e.is_stale_connection());
        if !retry && stale && more && self.idempotent && !self.stale_resent && body_available {
            self.stale_resent = true;
            self.attempt -= 1;
            self.outstanding = previous; // the same attempt, made again
            return Next::Resend;
        }
        // The retried attempt has its result: no longer outstanding (before asking for the
        // next one, which may take its place).
        match previous {
            Some(g) if !retriable => g.succeeded(),
            other => drop(other),
        }
        if let (true, Some((breaker, key))) = (retry, self.budget) {
            self.outstanding = breaker.try_retry();
            if self.outstanding.is_none() {
                debug!(cluster = %cluster_name(key), "retry overflow: maxRetries outstanding");
                retry = false;
            }
        }
        if !retry {
            return Next::Done;
        }
        self.tried.push(idx);
        Next::Retry(self.policy.backoff(self.attempt))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::super::super::snapshot::{ClusterRt, DEFAULT_CONNECT_TIMEOUT};
    use super::super::super::tests::cluster;
    use super::super::super::upstream::Endpoint;
    use super::super::testing::{cluster_rt, connect_error, stale_error, stat};
    use super::*;
    use meshpath_model::l7::{ConnectionPool, LoadBalancer, RetryOn, RetryPolicy};

    fn addr() -> SocketAddr {
        "127.0.0.1:22000".parse().unwrap()
    }

    fn target(max_retries: Option<u32>) -> (Target, Arc<ClusterRt>) {
        let mut c = cluster(&[addr()], LoadBalancer::RoundRobin);
        c.policy.connection_pool = ConnectionPool {
            max_retries,
            ..ConnectionPool::default()
        };
        let (rt, _) = cluster_rt(c);
        (Target::Cluster(rt.clone()), rt)
    }

    fn policy(attempts: u32, on: &[RetryOn]) -> RetryRt {
        RetryRt::from_policy(Some(&RetryPolicy {
            attempts,
            per_try_timeout: None,
            retry_on: on.to_vec(),
            backoff: None,
        }))
    }

    fn is_retry(n: &Next) -> bool {
        matches!(n, Next::Retry(_))
    }

    #[test]
    fn honours_attempts() {
        let (t, rt) = target(None);
        let p = policy(2, &[RetryOn::FiveXx]);
        let mut r = Retry::new(&p, &t, &Method::POST);
        let mut made = 0;
        loop {
            assert_eq!(r.begin(), made + 1);
            made += 1;
            if !is_retry(&r.after(Attempted::Status(500), 0, true)) {
                break;
            }
        }
        assert_eq!(made, 3, "the first attempt and two retries");
        assert_eq!(r.tried(), [0, 0]);
        assert_eq!(stat(&rt, "upstream_rq_retry"), 2);
        // None succeeded: the last answer was still retriable.
        assert_eq!(stat(&rt, "upstream_rq_retry_success"), 0);
        // Retries no longer outstanding once the request is decided.
        assert_eq!(
            stat(&rt, "circuit_breakers.default.remaining_retries"),
            u64::from(u32::MAX)
        );
    }

    #[test]
    fn honours_retry_on() {
        let (t, _) = target(None);
        let case = |on: &[RetryOn], result: Attempted<'_>| {
            let p = policy(1, on);
            let mut r = Retry::new(&p, &t, &Method::POST);
            r.begin();
            is_retry(&r.after(result, 0, true))
        };
        let refused = connect_error(addr());
        assert!(case(&[RetryOn::FiveXx], Attempted::Status(500)));
        assert!(!case(&[RetryOn::FiveXx], Attempted::Status(404)));
        assert!(!case(&[RetryOn::GatewayError], Attempted::Status(500)));
        assert!(case(&[RetryOn::GatewayError], Attempted::Status(502)));
        assert!(case(&[RetryOn::GatewayError], Attempted::TimedOut));
        assert!(case(&[RetryOn::RetriableStatus4xx], Attempted::Status(409)));
        assert!(!case(
            &[RetryOn::RetriableStatus4xx],
            Attempted::Status(503)
        ));
        assert!(case(
            &[RetryOn::ConnectFailure],
            Attempted::Failed(&refused)
        ));
        assert!(!case(&[RetryOn::ConnectFailure], Attempted::Status(503)));
        assert!(!case(&[RetryOn::ConnectFailure], Attempted::TimedOut));
        assert!(case(&[RetryOn::Reset], Attempted::Failed(&refused)));
        // Empty `retryOn`: Istio's defaults, connect failures and 503.
        assert!(case(&[], Attempted::Status(503)));
        assert!(!case(&[], Attempted::Status(500)));
        assert!(case(&[], Attempted::Failed(&refused)));
    }

    #[test]
    fn a_body_that_cannot_be_sent_again_is_not_retried() {
        let (t, _) = target(None);
        let p = policy(3, &[RetryOn::FiveXx]);
        let mut r = Retry::new(&p, &t, &Method::POST);
        r.begin();
        assert_eq!(r.after(Attempted::Status(503), 0, false), Next::Done);
    }

    #[test]
    fn the_budget_bounds_outstanding_retries() {
        let (t, rt) = target(Some(1));
        let p = policy(2, &[RetryOn::FiveXx]);
        let (mut a, mut b) = (
            Retry::new(&p, &t, &Method::GET),
            Retry::new(&p, &t, &Method::GET),
        );
        a.begin();
        b.begin();
        assert!(is_retry(&a.after(Attempted::Status(503), 0, true)));
        assert_eq!(stat(&rt, "circuit_breakers.default.rq_retry_open"), 1);
        // `a`'s retry is outstanding: `b` gets its own answer.
        assert_eq!(b.after(Attempted::Status(503), 0, true), Next::Done);
        assert_eq!(stat(&rt, "upstream_rq_retry_overflow"), 1);
        // `a`'s retry succeeds, which frees the budget.
        a.begin();
        assert_eq!(a.after(Attempted::Status(200), 0, true), Next::Done);
        assert_eq!(stat(&rt, "upstream_rq_retry_success"), 1);
        assert_eq!(stat(&rt, "circuit_breakers.default.remaining_retries"), 1);
        let mut c = Retry::new(&p, &t, &Method::GET);
        c.begin();
        assert!(is_retry(&c.after(Attempted::Status(503), 0, true)));
        assert_eq!(stat(&rt, "upstream_rq_retry"), 2);
    }

    #[test]
    fn passthrough_retries_without_a_budget() {
        let ep = Arc::new(Endpoint::new(addr(), None));
        let t = Target::Passthrough(ep, DEFAULT_CONNECT_TIMEOUT);
        let p = RetryRt::istio_default();
        let mut r = Retry::new(&p, &t, &Method::GET);
        r.begin();
        assert!(is_retry(&r.after(Attempted::Status(503), 0, true)));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let (t, _) = target(None);
        let p = policy(10, &[RetryOn::FiveXx]);
        // Envoy: base 25 ms, full jitter over 25 × (2^n - 1) ms, at most 250 ms.
        let caps = [25u64, 75, 175, 250, 250];
        let mut longest = [Duration::ZERO; 5];
        let mut shortest = [Duration::MAX; 5];
        for _ in 0..400 {
            let mut r = Retry::new(&p, &t, &Method::GET);
            for (n, cap) in caps.iter().enumerate() {
                r.begin();
                let Next::Retry(d) = r.after(Attempted::Status(500), n, true) else {
                    panic!("retried");
                };
                assert!(d <= Duration::from_millis(*cap), "retry {n}: {d:?}");
                longest[n] = longest[n].max(d);
                shortest[n] = shortest[n].min(d);
            }
        }
        for (n, cap) in caps.iter().enumerate() {
            assert!(
                longest[n] >= Duration::from_millis(cap * 3 / 4),
                "retry {n}"
            );
            assert!(shortest[n] <= Duration::from_millis(cap / 4), "retry {n}");
        }
    }

    #[test]
    fn a_backoff_base_scales_the_waits_and_caps_them_at_ten_times() {
        let (t, _) = target(None);
        let p = RetryRt::from_policy(Some(&RetryPolicy {
            attempts: 10,
            per_try_timeout: None,
            retry_on: vec![RetryOn::FiveXx],
            backoff: Some(Duration::from_millis(100)),
        }));
        // base 100 ms: caps 100, 300, 700, then ten times the base.
        let caps = [100u64, 300, 700, 1000, 1000, 1000];
        let mut longest = [Duration::ZERO; 6];
        for _ in 0..400 {
            let mut r = Retry::new(&p, &t, &Method::GET);
            for (n, cap) in caps.iter().enumerate() {
                r.begin();
                let Next::Retry(d) = r.after(Attempted::Status(500), n, true) else {
                    panic!("retried");
                };
                assert!(d <= Duration::from_millis(*cap), "retry {n}: {d:?}");
                longest[n] = longest[n].max(d);
            }
        }
        for (n, cap) in caps.iter().enumerate() {
            assert!(
                longest[n] >= Duration::from_millis(cap * 3 / 4),
                "retry {n}: {:?}",
                longest[n]
            );
        }
    }

    #[tokio::test]
    async fn a_stale_connection_is_resent_once_for_idempotent_requests() {
        let stale = stale_error().await;
        let (t, rt) = target(None);
        // `connect-failure` alone does not retry a reset: only the stale resend applies.
        let p = policy(1, &[RetryOn::ConnectFailure]);
        let mut get = Retry::new(&p, &t, &Method::GET);
        assert_eq!(get.begin(), 1);
        assert_eq!(get.after(Attempted::Failed(&stale), 0, true), Next::Resend);
        assert_eq!(get.begin(), 1, "a resend is the same attempt");
        assert_eq!(get.after(Attempted::Failed(&stale), 0, true), Next::Done);
        assert!(get.tried().is_empty());
        assert_eq!(stat(&rt, "upstream_rq_retry"), 0);

        let mut post = Retry::new(&p, &t, &Method::POST);
        post.begin();
        assert_eq!(post.after(Attempted::Failed(&stale), 0, true), Next::Done);

        // No attempts left (a WebSocket handshake, say): not even the resend.
        let none = RetryRt::none();
        let mut once = Retry::new(&none, &t, &Method::GET);
        once.begin();
        assert_eq!(once.after(Attempted::Failed(&stale), 0, true), Next::Done);
    }
}
