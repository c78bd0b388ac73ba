//! Envoy's router stats that belong to no cluster: `http.<stat_prefix>.no_cluster`, requests
//! whose route names a cluster the config does not define (answered 503, flag `NC`). Keyed by
//! the port the request was sent to, as Istio's outbound HTTP listeners are
//! (`outbound_0.0.0.0_<port>`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub(crate) struct RouterStats {
    /// Counted only on that error path, so one lock is cheap enough.
    no_cluster: Mutex<BTreeMap<u16, u64>>,
}

impl RouterStats {
    pub(crate) fn count_no_cluster(&self, port: u16) {
        let mut map = self.no_cluster.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(port).or_default() += 1;
    }

    /// `(stat prefix, stat, value)`, every value a counter.
    pub(crate) fn values(&self) -> Vec<(String, &'static str, u64)> {
        let map = self.no_cluster.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(port, v)| (stat_prefix(*port), "no_cluster", *v))
            .collect()
    }

    /// Envoy's `/stats` lines: `http.<prefix>.<stat>: <value>`.
    pub(crate) fn render_envoy(&self) -> String {
        let mut out = String::new();
        for (prefix, stat, v) in self.values() {
            let _ = writeln!(out, "http.{prefix}.{stat}: {v}");
        }
        out
    }
}

fn stat_prefix(port: u16) -> String {
    format!("outbound_0.0.0.0_{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_port_in_envoys_names() {
        let s = RouterStats::default();
        assert_eq!(s.render_envoy(), "");
        s.count_no_cluster(9080);
        s.count_no_cluster(9080);
        s.count_no_cluster(80);
        assert_eq!(
            s.render_envoy(),
            "http.outbound_0.0.0.0_80.no_cluster: 1\nhttp.outbound_0.0.0.0_9080.no_cluster: 2\n"
        );
    }
}
