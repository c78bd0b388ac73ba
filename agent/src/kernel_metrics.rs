//! The kernel datapath's counters for the admin listener, from the pinned maps opened once and
//! kept (opening every map per request costs syscalls per map). One read of the maps, the
//! datapath's [`Status`], feeds both forms: Envoy-style `/stats` lines (`meshpath.<reason>`,
//! `meshpath.service.<name>|<frontend>.<stat>`, `meshpath.limit_group.<cluster>.<stat>`) and the
//! prometheus-client [`Collector`] behind `/metrics`, so the two always agree.
//!
//! Cardinality: reasons are a fixed set; services and limit groups one series each per
//! Service port / route destination (labelled by name and ClusterIP:port, never by pod).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use meshpath_datapath::status::Status;
use meshpath_datapath::DatapathMaps;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tracing::debug;

/// The pinned maps, opened at the first read that finds them and kept.
pub struct KernelStats {
    pin_dir: PathBuf,
    maps: Mutex<Option<DatapathMaps>>,
}

impl std::fmt::Debug for KernelStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelStats")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl KernelStats {
    pub fn new(pin_dir: PathBuf) -> Self {
        Self {
            pin_dir,
            maps: Mutex::new(None),
        }
    }

    /// What the maps hold now (`None` while they are not pinned or unreadable). Map reads are
    /// syscalls: call it off the async workers.
    pub fn status(&self) -> Option<Status> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if maps.is_none() {
            match DatapathMaps::open_pinned(&self.pin_dir) {
                Ok(m) => *maps = Some(m),
                Err(error) => {
                    debug!(pin_dir = %self.pin_dir.display(), %error, "no kernel stats");
                    return None;
                }
            }
        }
        let m = maps.as_ref()?;
        match meshpath_datapath::status::from_maps(m, &self.pin_dir) {
            Ok(s) => Some(s),
            Err(error) => {
                debug!(pin_dir = %self.pin_dir.display(), %error, "no kernel stats");
                None
            }
        }
    }

    /// Envoy-style `/stats` lines (empty when the maps cannot be read).
    pub fn envoy_text(&self) -> String {
        self.status().map(|s| envoy_text(&s)).unwrap_or_default()
    }
}

/// The values both forms show, in one place: `(stat, help, is_counter, series)`.
type Series = Vec<(Vec<(&'static str, String)>, u64)>;

fn families(status: &Status) -> Vec<(&'static str, &'static str, bool, Series)> {
    let reasons = status
        .counters
        .iter()
        .map(|(name, v)| (vec![("reason", (*name).to_owned())], *v))
        .collect();
    let svc = |f: fn(&meshpath_datapath::status::ServiceStatus) -> u64| -> Series {
        status
            .services
            .iter()
            .map(|s| {
                let labels = vec![
                    ("service", s.name.clone()),
                    ("frontend", s.frontend.clone()),
                ];
                (labels, f(s))
            })
            .collect()
    };
    let grp = |f: fn(&meshpath_datapath::status::GroupStatus) -> u64| -> Series {
        status
            .limit_groups
            .iter()
            .map(|g| (vec![("cluster_name", g.name.clone())], f(g)))
            .collect()
    };
    vec![
        (
            "meshpath_kernel_events",
            "Kernel datapath events by reason, summed over CPUs",
            true,
            reasons,
        ),
        (
            "meshpath_service_connects",
            "Connects the kernel translated to a backend of the service",
            true,
            svc(|s| s.connects),
        ),
        (
            "meshpath_service_no_backend",
            "Connects to the service refused for lack of a backend",
            true,
            svc(|s| s.no_backend),
        ),
        (
            "meshpath_service_active_connections",
            "Connections counted against the service's kernel connection limit",
            false,
            svc(|s| s.active_connections),
        ),
        (
            "meshpath_service_conn_limit_refused",
            "Connects refused by the service's kernel connection limit",
            true,
            svc(|s| s.conn_limit_refused),
        ),
        (
            "meshpath_limit_group_max_connections",
            "A route destination's kernel maxConnections",
            false,
            grp(|g| u64::from(g.max_connections)),
        ),
        (
            "meshpath_limit_group_active_connections",
            "Connections counted against a route destination's kernel limit",
            false,
            grp(|g| g.active_connections),
        ),
        (
            "meshpath_limit_group_conn_limit_refused",
            "Connects refused by a route destination's kernel limit",
            true,
            grp(|g| g.refused),
        ),
    ]
}

fn envoy_text(status: &Status) -> String {
    let mut out = String::new();
    for (name, v) in &status.counters {
        let _ = writeln!(out, "meshpath.{name}: {v}");
    }
    for s in &status.services {
        let svc = format!("meshpath.service.{}|{}", s.name, s.frontend);
        for (stat, v) in [
            ("connects", s.connects),
            ("no_backend", s.no_backend),
            ("active_connections", s.active_connections),
            ("conn_limit_refused", s.conn_limit_refused),
        ] {
            let _ = writeln!(out, "{svc}.{stat}: {v}");
        }
    }
    // Per-subset kernel limits, under Istio's cluster name as the proxy's stats are.
    for g in &status.limit_groups {
        let group = format!("meshpath.limit_group.{}", g.name);
        for (stat, v) in [
            ("max_connections", u64::from(g.max_connections)),
            ("active_connections", g.active_connections),
            ("conn_limit_refused", g.refused),
        ] {
            let _ = writeln!(out, "{group}.{stat}: {v}");
        }
    }
    out
}

impl Collector for KernelStats {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match self.status() {
            Some(status) => encode_status(&status, encoder),
            None => Ok(()),
        }
    }
}

fn encode_status(status: &Status, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
    for (name, help, is_counter, series) in families(status) {
        if series.is_empty() {
            continue;
        }
        let kind = if is_counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for (labels, v) in &series {
            let m = family.encode_family(labels)?;
            if is_counter {
                ConstCounter::new(*v).encode(m)?;
            } else {
                ConstGauge::new(*v).encode(m)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_datapath::status::{GroupStatus, RedirectStatus, ServiceStatus};
    use prometheus_client::registry::Registry;

    /// A collector over a fixed [`Status`] (the maps need root and a loaded datapath: the
    /// privileged test `admin_metrics` covers the live path).
    #[derive(Debug)]
    struct Fixed(Status);
    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_status(&self.0, encoder)
        }
    }

    fn status() -> Status {
        Status {
            pin_dir: "/sys/fs/bpf/x".into(),
            services: vec![ServiceStatus {
                name: "shop/web:http".into(),
                svc_id: 1,
                frontend: "10.96.0.1:80".into(),
                protocol: "TCP",
                policy: "random",
                affinity_timeout_sec: None,
                route_limits: false,
                backends: vec![],
                connects: 7,
                datagrams: 0,
                no_backend: 1,
                affinity_hits: 0,
                max_connections: None,
                active_connections: 2,
                conn_limit_refused: 0,
                lb: meshpath_datapath::status::PolicyStatus {
                    name: "random".into(),
                    from: "default",
                    enforced: "kernel",
                    why: String::new(),
                },
                proxy: None,
            }],
            limit_groups: vec![GroupStatus {
                group_id: 1,
                name: "outbound|80|v1|web.shop.svc.cluster.local".into(),
                max_connections: 5,
                active_connections: 1,
                refused: 3,
            }],
            counters: [("connect_translated", 7)].into_iter().collect(),
            socket_redirect: RedirectStatus {
                new_connections: false,
                scope: "off",
                opted_in_pods: 0,
                sockhash_entries: 0,
            },
        }
    }

    #[test]
    fn both_forms_show_the_same_values() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(status())));
        let mut prom = String::new();
        prometheus_client::encoding::text::encode(&mut prom, &registry).unwrap();
        let envoy = envoy_text(&status());
        for line in [
            "meshpath.connect_translated: 7",
            "meshpath.service.shop/web:http|10.96.0.1:80.connects: 7",
            "meshpath.limit_group.outbound|80|v1|web.shop.svc.cluster.local.conn_limit_refused: 3",
        ] {
            assert!(envoy.lines().any(|l| l == line), "{line} not in:\n{envoy}");
        }
        for line in [
            r#"meshpath_kernel_events_total{reason="connect_translated"} 7"#,
            r#"meshpath_service_connects_total{service="shop/web:http",frontend="10.96.0.1:80"} 7"#,
            r#"meshpath_service_active_connections{service="shop/web:http",frontend="10.96.0.1:80"} 2"#,
            r#"meshpath_limit_group_conn_limit_refused_total{cluster_name="outbound|80|v1|web.shop.svc.cluster.local"} 3"#,
        ] {
            assert!(prom.lines().any(|l| l == line), "{line} not in:\n{prom}");
        }
    }
}
