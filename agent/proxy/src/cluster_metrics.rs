//! The proxy's per-cluster stats as a prometheus-client [`Collector`]: a scrape encodes each
//! cluster's live atomics directly (Istio's `envoy_cluster_<stat>{cluster_name=...}`), and
//! Envoy's `/stats` text is rendered from the same [`ClusterStats::values`], so both show one
//! source of truth. Cardinality: one series per stat and cluster (service, port, subset).

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::breaker::envoy_cluster_name;
use crate::ProxyStats;

/// The label of one router stat: its HTTP connection manager's prefix.
type PrefixLabel<'a> = [(&'a str, String); 1];

/// The metric family of an Envoy stat: dots become underscores, and a counter's own `_total`
/// is dropped because the encoder appends one.
fn family_name(stat: &str, is_counter: bool) -> String {
    let stat = if is_counter {
        stat.strip_suffix("_total").unwrap_or(stat)
    } else {
        stat
    };
    format!("envoy_cluster_{}", stat.replace('.', "_"))
}

/// One stat's series: `(is_counter, [(cluster_name label, value)])`.
type StatSeries = (bool, Vec<([(&'static str, String); 1], u64)>);

impl Collector for ProxyStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Values are read under the lock (atomics, no allocation per value beyond the
        // cluster names), then grouped by stat: the text format wants one family at a time.
        let mut by_stat: BTreeMap<&'static str, StatSeries> = BTreeMap::new();
        {
            let map = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
            for (key, st) in map.iter() {
                let cluster = envoy_cluster_name(key);
                for (stat, v, is_counter) in st.values() {
                    by_stat
                        .entry(stat)
                        .or_insert_with(|| (is_counter, Vec::new()))
                        .1
                        .push(([("cluster_name", cluster.clone())], v));
                }
            }
        }
        for (stat, (is_counter, series)) in &by_stat {
            let name = family_name(stat, *is_counter);
            let help = format!("Envoy cluster stat {stat}");
            let kind = if *is_counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut family = encoder.encode_descriptor(&name, &help, None, kind)?;
            for (labels, v) in series {
                let m = family.encode_family(labels)?;
                if *is_counter {
                    ConstCounter::new(*v).encode(m)?;
                } else {
                    ConstGauge::new(*v).encode(m)?;
                }
            }
        }
        // Router stats (`http.<prefix>.<stat>`), tagged as Istio's stats config does.
        let mut by_stat: BTreeMap<&'static str, Vec<(PrefixLabel, u64)>> = BTreeMap::new();
        for (prefix, stat, v) in self.router_values() {
            by_stat
                .entry(stat)
                .or_default()
                .push(([("http_conn_manager_prefix", prefix)], v));
        }
        for (stat, series) in &by_stat {
            let name = format!("envoy_http_{stat}");
            let help = format!("Envoy router stat {stat}");
            let mut family = encoder.encode_descriptor(&name, &help, None, MetricType::Counter)?;
            for (labels, v) in series {
                ConstCounter::new(*v).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for ProxyStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyStats")
    }
}

#[cfg(test)]
mod tests {
    use super::family_name;

    #[test]
    fn family_names_follow_istio() {
        assert_eq!(
            family_name("upstream_rq_total", true),
            "envoy_cluster_upstream_rq"
        );
        assert_eq!(
            family_name("circuit_breakers.default.remaining_cx", false),
            "envoy_cluster_circuit_breakers_default_remaining_cx"
        );
    }
}
