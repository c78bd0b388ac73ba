//! Recent samples, so each request for the graph gets rates over a window however often (or
//! by how many viewers) it is polled: the baseline is the oldest sample inside the window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{compute, Graph, Sample};

/// The rate window when a request names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// The longest window a request may ask for: samples older than this are dropped.
pub const MAX_WINDOW: Duration = Duration::from_secs(300);
/// Samples are kept at most this often, bounding the history to MAX_WINDOW / SPACING entries
/// however many viewers poll.
const SPACING: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct History {
    samples: VecDeque<(Instant, Sample)>,
}

impl History {
    /// The graph of `sample`, taken at `at`, with rates over (up to) `window`; `sample` is kept
    /// as a later baseline.
    pub fn graph(&mut self, at: Instant, sample: Sample, window: Duration) -> Graph {
        let window = window.min(MAX_WINDOW);
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > MAX_WINDOW)
        {
            self.samples.pop_front();
        }
        // The oldest sample inside the window; else (polled less often than the window) the
        // newest one before it, so rates still show.
        let earlier = |t: &Instant| *t < at;
        let base = self
            .samples
            .iter()
            .find(|(t, _)| earlier(t) && at.duration_since(*t) <= window)
            .or_else(|| self.samples.iter().rev().find(|(t, _)| earlier(t)))
            .map(|(t, s)| (s, at.duration_since(*t).as_secs_f64()));
        let g = compute::graph(&sample, base);
        let due = self
            .samples
            .back()
            .is_none_or(|(t, _)| at.saturating_duration_since(*t) >= SPACING);
        if due {
            self.samples.push_back((at, sample));
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::super::sample::{EdgeKey, Totals};
    use super::super::{NodeId, Protocol, Traffic};
    use super::*;

    fn requests(n: f64) -> Sample {
        let key = EdgeKey {
            source: NodeId::workload("a", "b"),
            target: NodeId::service("a", "c"),
            protocol: Protocol::Http,
        };
        Sample {
            edges: [(
                key,
                Totals {
                    requests: n,
                    ..Totals::default()
                },
            )]
            .into(),
        }
    }

    fn rps(g: &Graph) -> Option<f64> {
        match g.edges[0].traffic {
            Traffic::Http { rps, .. } => rps,
            Traffic::Tcp { .. } => None,
        }
    }

    #[test]
    fn rates_use_the_oldest_sample_in_the_window() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut h = History::default();
        let w = Duration::from_secs(10);
        assert_eq!(rps(&h.graph(t0, requests(0.0), w)), None);
        assert_eq!(rps(&h.graph(s(2), requests(20.0), w)), Some(10.0));
        assert_eq!(rps(&h.graph(s(4), requests(60.0), w)), Some(15.0));
        // t0 has left the 10 s window: the baseline is the sample at 2 s.
        let g = h.graph(s(12), requests(120.0), w);
        assert_eq!((g.window_s, rps(&g)), (Some(10.0), Some(10.0)));
        // Nothing inside a 1 s window: the newest earlier sample (at 12 s) serves.
        let g = h.graph(s(20), requests(200.0), Duration::from_secs(1));
        assert_eq!((g.window_s, rps(&g)), (Some(8.0), Some(10.0)));
    }

    #[test]
    fn frequent_polls_keep_one_sample_per_second_and_old_ones_go() {
        let t0 = Instant::now();
        let mut h = History::default();
        for ms in (0..3000).step_by(100) {
            h.graph(
                t0 + Duration::from_millis(ms),
                requests(0.0),
                DEFAULT_WINDOW,
            );
        }
        assert_eq!(h.samples.len(), 3);
        h.graph(
            t0 + MAX_WINDOW + Duration::from_secs(2),
            requests(0.0),
            MAX_WINDOW,
        );
        // Everything older than MAX_WINDOW is gone; the new one is kept.
        assert_eq!(h.samples.len(), 2);
    }
}
