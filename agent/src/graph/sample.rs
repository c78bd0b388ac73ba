//! One scrape of the Istio metrics folded into graph edges, Kiali's way: a request from workload
//! W to service S served by workload D is traffic on the edges W → S and S → D.

use std::collections::BTreeMap;

use super::prom::Series;
use super::{NodeId, Protocol};

/// An edge between two graph nodes, for one protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EdgeKey {
    pub source: NodeId,
    pub target: NodeId,
    pub protocol: Protocol,
}

/// Counter totals of one edge at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub requests: f64,
    /// 5xx responses.
    pub errors: f64,
    /// Cumulative duration histogram: upper bound (as `f64::to_bits`, which orders positive
    /// bounds as the numbers do) → requests at most that long.
    pub buckets: BTreeMap<u64, f64>,
    pub connections: f64,
    /// Bytes both ways (sent plus received by the client).
    pub bytes: f64,
}

/// Every edge's totals at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub edges: BTreeMap<EdgeKey, Totals>,
}

const UNKNOWN: &str = "unknown";

impl Sample {
    /// Folds the Istio series of one scrape; other metrics are ignored.
    pub fn from_series(series: &[Series]) -> Sample {
        let mut sample = Sample::default();
        for s in series {
            let (protocol, add): (Protocol, fn(&mut Totals, &Series)) = match s.name.as_str() {
                "istio_requests_total" => (Protocol::Http, |t, s| {
                    t.requests += s.value;
                    if s.label("response_code").starts_with('5') {
                        t.errors += s.value;
                    }
                }),
                "istio_request_duration_milliseconds_bucket" => (Protocol::Http, |t, s| {
                    let le = match s.label("le") {
                        "+Inf" => f64::INFINITY,
                        le => le.parse().unwrap_or(f64::NAN),
                    };
                    if le >= 0.0 {
                        *t.buckets.entry(le.to_bits()).or_default() += s.value;
                    }
                }),
                "istio_tcp_connections_opened_total" => {
                    (Protocol::Tcp, |t, s| t.connections += s.value)
                }
                "istio_tcp_sent_bytes_total" | "istio_tcp_received_bytes_total" => {
                    (Protocol::Tcp, |t, s| t.bytes += s.value)
                }
                _ => continue,
            };
            for (source, target) in hops(s) {
                let key = EdgeKey {
                    source,
                    target,
                    protocol,
                };
                add(sample.edges.entry(key).or_default(), s);
            }
        }
        sample
    }
}

/// The edges one series counts on: client workload → service → serving workload. A request
/// no workload served (a fault abort, no healthy endpoint) ends at the service; one without a
/// known service goes straight to the serving workload (or to the `unknown` node).
fn hops(s: &Series) -> Vec<(NodeId, NodeId)> {
    let source = NodeId::workload(
        s.label("source_workload_namespace"),
        s.label("source_workload"),
    );
    let dest_workload = (s.label("destination_workload") != UNKNOWN).then(|| {
        NodeId::workload(
            s.label("destination_workload_namespace"),
            s.label("destination_workload"),
        )
    });
    let service = (s.label("destination_service_name") != UNKNOWN).then(|| {
        NodeId::service(
            s.label("destination_service_namespace"),
            s.label("destination_service_name"),
        )
    });
    match (service, dest_workload) {
        (Some(svc), Some(dest)) => vec![(source, svc.clone()), (svc, dest)],
        (Some(svc), None) => vec![(source, svc)],
        (None, Some(dest)) => vec![(source, dest)],
        (None, None) => vec![(source, NodeId::workload(UNKNOWN, UNKNOWN))],
    }
}

#[cfg(test)]
mod tests {
    use super::super::prom::parse;
    use super::*;

    fn l(src: &str, svc: &str, dst: &str, extra: &str) -> String {
        format!(
            "source_workload=\"{src}\",source_workload_namespace=\"shop\",destination_workload=\"{dst}\",destination_workload_namespace=\"shop\",destination_service_name=\"{svc}\",destination_service_namespace=\"shop\"{extra}"
        )
    }

    fn key(source: NodeId, target: NodeId, protocol: Protocol) -> EdgeKey {
        EdgeKey {
            source,
            target,
            protocol,
        }
    }

    #[test]
    fn requests_count_on_both_hops_and_aborts_end_at_the_service() {
        let text = format!(
            "istio_requests_total{{{}}} 8\nistio_requests_total{{{}}} 2\n\
             istio_request_duration_milliseconds_bucket{{{}}} 6\n\
             istio_request_duration_milliseconds_bucket{{{}}} 8\n\
             istio_tcp_connections_opened_total{{{}}} 3\n\
             istio_tcp_sent_bytes_total{{{}}} 10\nistio_tcp_received_bytes_total{{{}}} 20\n\
             envoy_cluster_upstream_rq_total{{cluster_name=\"x\"}} 99\n",
            l("web", "api", "api-v1", ",response_code=\"200\""),
            l("web", "api", "unknown", ",response_code=\"503\""),
            l("web", "api", "api-v1", ",response_code=\"200\",le=\"5.0\""),
            l("web", "api", "api-v1", ",response_code=\"200\",le=\"+Inf\""),
            l("web", "db", "db-0", ""),
            l("web", "db", "db-0", ""),
            l("web", "db", "db-0", ""),
        );
        let s = Sample::from_series(&parse(&text).unwrap());
        let (web, api, api_v1) = (
            NodeId::workload("shop", "web"),
            NodeId::service("shop", "api"),
            NodeId::workload("shop", "api-v1"),
        );
        let first = &s.edges[&key(web.clone(), api.clone(), Protocol::Http)];
        assert_eq!((first.requests, first.errors), (10.0, 2.0));
        let second = &s.edges[&key(api, api_v1, Protocol::Http)];
        assert_eq!((second.requests, second.errors), (8.0, 0.0));
        let buckets: Vec<(f64, f64)> = second
            .buckets
            .iter()
            .map(|(b, n)| (f64::from_bits(*b), *n))
            .collect();
        assert_eq!(buckets, [(5.0, 6.0), (f64::INFINITY, 8.0)]);
        let tcp = &s.edges[&key(web, NodeId::service("shop", "db"), Protocol::Tcp)];
        assert_eq!((tcp.connections, tcp.bytes), (3.0, 30.0));
        // web → api, api → api-v1, web → db, db → db-0.
        assert_eq!(s.edges.len(), 4);
    }

    #[test]
    fn unknown_service_and_workload_lead_to_the_unknown_node() {
        let text = format!(
            "istio_requests_total{{{}}} 1\n",
            l("web", "unknown", "unknown", ",response_code=\"404\"")
        );
        let s = Sample::from_series(&parse(&text).unwrap());
        let k = key(
            NodeId::workload("shop", "web"),
            NodeId::workload("unknown", "unknown"),
            Protocol::Http,
        );
        assert_eq!(s.edges[&k].requests, 1.0);
    }
}
