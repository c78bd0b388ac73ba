//! Rates, error rates and p99 of each edge from two samples, as Prometheus' `rate()` and
//! `histogram_quantile()` would compute them over the window between the samples.

use std::collections::BTreeSet;

use super::sample::{Sample, Totals};
use super::{Edge, Graph, Node, NodeId, Protocol, Traffic};

/// The graph at `now`; rates over `base` (an earlier sample and its age in seconds) when given.
pub fn graph(now: &Sample, base: Option<(&Sample, f64)>) -> Graph {
    let base = base.filter(|(_, secs)| *secs > 0.0);
    let mut nodes = BTreeSet::new();
    let mut edges = Vec::new();
    for (key, totals) in &now.edges {
        let window = base.map(|(sample, secs)| {
            let zero = Totals::default();
            let before = sample.edges.get(key).unwrap_or(&zero);
            (delta(totals, before), secs)
        });
        let traffic = match key.protocol {
            Protocol::Http => Traffic::Http {
                requests: totals.requests as u64,
                errors: totals.errors as u64,
                rps: window.as_ref().map(|(d, secs)| d.requests / secs),
                error_rate: window
                    .as_ref()
                    .filter(|(d, _)| d.requests > 0.0)
                    .map(|(d, _)| d.errors / d.requests),
                p99_ms: window.as_ref().and_then(|(d, _)| quantile(0.99, d)),
            },
            Protocol::Tcp => Traffic::Tcp {
                connections: totals.connections as u64,
                bytes: totals.bytes as u64,
                cps: window.as_ref().map(|(d, secs)| d.connections / secs),
                bps: window.as_ref().map(|(d, secs)| d.bytes / secs),
            },
        };
        nodes.insert(key.source.clone());
        nodes.insert(key.target.clone());
        edges.push(Edge {
            source: key.source.to_string(),
            target: key.target.to_string(),
            traffic,
        });
    }
    Graph {
        window_s: base.map(|(_, secs)| secs),
        nodes: nodes.into_iter().map(node).collect(),
        edges,
    }
}

fn node(id: NodeId) -> Node {
    Node {
        id: id.to_string(),
        kind: id.kind,
        namespace: id.namespace,
        name: id.name,
    }
}

/// `now - before`, or `now` when a counter went down (the series restarted from zero).
fn delta(now: &Totals, before: &Totals) -> Totals {
    let reset = now.requests < before.requests
        || now.connections < before.connections
        || now.bytes < before.bytes
        || now
            .buckets
            .iter()
            .any(|(le, n)| *n < before.buckets.get(le).copied().unwrap_or(0.0));
    if reset {
        return now.clone();
    }
    Totals {
        requests: now.requests - before.requests,
        errors: (now.errors - before.errors).max(0.0),
        buckets: now
            .buckets
            .iter()
            .map(|(le, n)| (*le, n - before.buckets.get(le).copied().unwrap_or(0.0)))
            .collect(),
        connections: now.connections - before.connections,
        bytes: now.bytes - before.bytes,
    }
}

/// The `q` quantile of a cumulative histogram, interpolated linearly inside the bucket it falls
/// in (Prometheus' `histogram_quantile`); the highest finite bound when it falls in `+Inf`.
fn quantile(q: f64, t: &Totals) -> Option<f64> {
    let total = *t.buckets.values().last()?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in &t.buckets {
        let upper = f64::from_bits(*le);
        if *count >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (upper - lower) * (rank - below) / (count - below));
        }
        (lower, below) = (upper, *count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::sample::EdgeKey;
    use super::*;

    fn key(protocol: Protocol) -> EdgeKey {
        EdgeKey {
            source: NodeId::workload("shop", "web"),
            target: NodeId::service("shop", "api"),
            protocol,
        }
    }

    fn http(requests: f64, errors: f64, buckets: &[(f64, f64)]) -> Sample {
        let t = Totals {
            requests,
            errors,
            buckets: buckets.iter().map(|(b, n)| (b.to_bits(), *n)).collect(),
            ..Totals::default()
        };
        Sample {
            edges: [(key(Protocol::Http), t)].into(),
        }
    }

    fn only(g: &Graph) -> &Traffic {
        assert_eq!(g.edges.len(), 1, "{g:?}");
        &g.edges[0].traffic
    }

    const INF: f64 = f64::INFINITY;

    #[test]
    fn rates_error_rate_and_p99_come_from_the_window_only() {
        // Before: 100 fast requests, no error. Then 200 more, 50 of them 5xx; of the 200, 180
        // took ≤ 10 ms and 20 between 10 and 100 ms.
        let before = http(100.0, 0.0, &[(10.0, 100.0), (100.0, 100.0), (INF, 100.0)]);
        let now = http(300.0, 50.0, &[(10.0, 280.0), (100.0, 300.0), (INF, 300.0)]);
        let g = graph(&now, Some((&before, 20.0)));
        assert_eq!(g.window_s, Some(20.0));
        let Traffic::Http {
            requests,
            errors,
            rps,
            error_rate,
            p99_ms,
        } = only(&g).clone()
        else {
            panic!("{g:?}")
        };
        assert_eq!((requests, errors), (300, 50));
        assert_eq!(rps, Some(10.0));
        assert_eq!(error_rate, Some(0.25));
        // Rank 198 of 200: 18 into the 20 of the (10, 100] bucket.
        assert_eq!(p99_ms, Some(10.0 + 90.0 * 18.0 / 20.0));
        assert_eq!(
            g.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["workload:shop/web", "service:shop/api"]
        );
    }

    #[test]
    fn without_a_window_only_totals_and_an_idle_window_has_no_error_rate() {
        let now = http(5.0, 1.0, &[(10.0, 5.0), (INF, 5.0)]);
        let first = graph(&now, None);
        assert_eq!(first.window_s, None);
        assert!(matches!(
            only(&first),
            Traffic::Http {
                requests: 5,
                errors: 1,
                rps: None,
                error_rate: None,
                p99_ms: None
            }
        ));
        let idle = graph(&now, Some((&now, 2.0)));
        assert!(matches!(
            only(&idle),
            Traffic::Http { rps: Some(r), error_rate: None, p99_ms: None, .. } if *r == 0.0
        ));
    }

    #[test]
    fn p99_in_the_inf_bucket_is_the_highest_finite_bound_and_resets_restart_from_zero() {
        let before = http(1000.0, 0.0, &[(10.0, 1000.0), (INF, 1000.0)]);
        // The counters restarted (agent restart): the whole sample is the window.
        let now = http(10.0, 0.0, &[(10.0, 5.0), (INF, 10.0)]);
        let g = graph(&now, Some((&before, 5.0)));
        assert!(matches!(
            only(&g),
            Traffic::Http { rps: Some(r), p99_ms: Some(p), .. } if *r == 2.0 && *p == 10.0
        ));
    }

    #[test]
    fn tcp_edges_rate_connections_and_bytes_and_new_edges_start_from_zero() {
        let tcp = |connections, bytes| Totals {
            connections,
            bytes,
            ..Totals::default()
        };
        let before = Sample {
            edges: [(key(Protocol::Tcp), tcp(4.0, 100.0))].into(),
        };
        let mut now = Sample {
            edges: [(key(Protocol::Tcp), tcp(10.0, 700.0))].into(),
        };
        let mut fresh = key(Protocol::Tcp);
        fresh.target = NodeId::service("shop", "db");
        now.edges.insert(fresh, tcp(2.0, 50.0));
        let g = graph(&now, Some((&before, 2.0)));
        let by_target = |t: &str| {
            g.edges
                .iter()
                .find(|e| e.target == t)
                .map(|e| e.traffic.clone())
        };
        assert_eq!(
            by_target("service:shop/api"),
            Some(Traffic::Tcp {
                connections: 10,
                bytes: 700,
                cps: Some(3.0),
                bps: Some(300.0)
            })
        );
        assert_eq!(
            by_target("service:shop/db"),
            Some(Traffic::Tcp {
                connections: 2,
                bytes: 50,
                cps: Some(1.0),
                bps: Some(25.0)
            })
        );
    }

    #[test]
    fn serializes_as_the_page_reads_it() {
        let g = graph(&http(1.0, 0.0, &[]), None);
        let json = serde_json::to_value(&g).unwrap();
        assert_eq!(json["edges"][0]["protocol"], "http");
        assert_eq!(json["edges"][0]["source"], "workload:shop/web");
        assert_eq!(json["edges"][0]["requests"], 1);
        assert_eq!(json["nodes"][1]["kind"], "service");
        let back: Graph = serde_json::from_value(json).unwrap();
        assert_eq!(back, g);
    }
}
