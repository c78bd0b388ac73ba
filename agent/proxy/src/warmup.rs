//! Slow start (`loadBalancer.warmup`), as Envoy's round robin and least request apply it: an
//! endpoint that joins a cluster after the cluster was first configured gets the weight
//! `max(min_weight, (age / window)^(1 / aggression))` (age at least 1 s, as Envoy counts)
//! until it is `window` old; the others weigh 1. While some endpoint warms, the cluster's
//! endpoint is drawn at random in proportion to these weights (Envoy's weighted scheduler
//! gives the same shares); afterwards the policy's own pick applies again. Endpoints present
//! when the proxy first sees the cluster are not warmed (an agent restart must not throttle
//! a whole service).
//!
//! Built once per config snapshot; a pick only reads the clock and the join times.

use std::time::{Duration, Instant};

use meshpath_model::l7::SlowStart;

#[derive(Debug)]
pub(crate) struct SlowStartRt {
    window: Duration,
    min_weight: f64,
    exponent: f64,
    /// When each endpoint (by index) joined; `None`: warm from the start.
    joined: Vec<Option<Instant>>,
    /// When the last warming endpoint is warm.
    until: Instant,
}

impl SlowStartRt {
    /// `None` when no endpoint joined later than the cluster's first configuration.
    pub(crate) fn new(p: &SlowStart, joined: Vec<Option<Instant>>) -> Option<SlowStartRt> {
        let latest = joined.iter().flatten().max().copied()?;
        Some(SlowStartRt {
            window: p.window,
            min_weight: p.min_weight.clamp(0.0, 1.0),
            exponent: 1.0 / p.aggression,
            joined,
            until: latest + p.window,
        })
    }

    /// Endpoint `i`'s weight at `now`, in 0.0..=1.0.
    fn weight(&self, i: usize, now: Instant) -> f64 {
        let Some(joined) = self.joined.get(i).copied().flatten() else {
            return 1.0;
        };
        let age = now.saturating_duration_since(joined);
        if age >= self.window || self.window.is_zero() {
            return 1.0;
        }
        let factor = age.max(Duration::from_secs(1)).as_secs_f64() / self.window.as_secs_f64();
        factor.powf(self.exponent).max(self.min_weight).min(1.0)
    }

    /// An endpoint drawn by weight while one warms (avoiding `tried` when it can), `None`
    /// once all are warm.
    pub(crate) fn pick(&self, tried: &[usize], now: Instant) -> Option<usize> {
        if now >= self.until {
            return None;
        }
        let n = self.joined.len();
        let usable = |i: &usize| !tried.contains(i);
        let candidates = if (0..n).any(|i| usable(&i)) {
            (0..n).filter(usable).collect::<Vec<_>>()
        } else {
            (0..n).collect()
        };
        self.pick_from(&candidates, now)
    }

    /// One of `candidates` (endpoint indices, not empty) drawn by weight while an endpoint
    /// warms, `None` once all are warm: the ejection and locality paths narrow the
    /// candidates first.
    pub(crate) fn pick_from(&self, candidates: &[usize], now: Instant) -> Option<usize> {
        if now >= self.until {
            return None;
        }
        let total: f64 = candidates.iter().map(|i| self.weight(*i, now)).sum();
        let mut r = fastrand::f64() * total;
        for &i in candidates {
            r -= self.weight(i, now);
            if r < 0.0 {
                return Some(i);
            }
        }
        candidates.last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow(window_s: u64, min: f64, aggression: f64) -> SlowStart {
        SlowStart {
            window: Duration::from_secs(window_s),
            min_weight: min,
            aggression,
        }
    }

    #[test]
    fn weights_grow_linearly_over_the_window() {
        let t0 = Instant::now();
        let rt = SlowStartRt::new(&slow(100, 0.1, 1.0), vec![None, Some(t0)]).expect("warming");
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(rt.weight(0, at(0)), 1.0);
        assert!(
            (rt.weight(1, at(0)) - 0.1).abs() < 1e-9,
            "min weight (age 1 s → 0.01)"
        );
        assert!((rt.weight(1, at(50)) - 0.5).abs() < 1e-9);
        assert!((rt.weight(1, at(80)) - 0.8).abs() < 1e-9);
        assert_eq!(rt.weight(1, at(100)), 1.0);
        assert_eq!(rt.pick(&[], at(100)), None, "warm: the policy picks again");
        // Aggression 2: the square root, a faster start.
        let fast = SlowStartRt::new(&slow(100, 0.0, 2.0), vec![Some(t0)]).expect("warming");
        assert!((fast.weight(0, at(25)) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn no_endpoint_joining_later_means_no_slow_start() {
        assert!(SlowStartRt::new(&slow(60, 0.1, 1.0), vec![None, None]).is_none());
    }

    #[test]
    fn picks_follow_the_weights() {
        let t0 = Instant::now();
        let rt = SlowStartRt::new(&slow(100, 0.1, 1.0), vec![None, Some(t0)]).expect("warming");
        let now = t0 + Duration::from_secs(25);
        // Weights 1 and 0.25: the new endpoint gets a fifth.
        let new = (0..10_000).filter(|_| rt.pick(&[], now) == Some(1)).count();
        // Binomial(10000, 0.2): sd 40; ±5 sd.
        assert!((1800..=2200).contains(&new), "{new}");
        assert_eq!(
            rt.pick(&[0], now),
            Some(1),
            "a retry avoids the tried endpoint"
        );
    }
}
