//! Istio's TCP metrics (`istio_tcp_*`) from the kernel's per-pair counters, for `/metrics`.
//! The kernel keys a pair by client IP, frontend and backend address; here both addresses become
//! pods of the current cluster model (workload, app, version), and the frontend the destination
//! service. Every label Istio emits is always present, `unknown` when unknown: Kiali skips series
//! that lack one.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use meshpath_datapath::tcp_metrics::{FlowTotals, TcpFlowStats, TcpMetricsReader};
use meshpath_model::{ClusterModel, Pod};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use tokio::sync::watch;
use tracing::debug;

type Labels = Vec<(&'static str, String)>;

const UNKNOWN: &str = "unknown";

/// One `istio_tcp_*` family: name, help, and which total it shows.
type Family = (&'static str, &'static str, fn(&TcpFlowStats) -> u64);

/// What the admin listener needs: the open map handles and the model to attribute pods from.
pub struct KernelTcpMetrics {
    reader: Mutex<TcpMetricsReader>,
    model: watch::Receiver<Arc<ClusterModel>>,
}

impl KernelTcpMetrics {
    pub fn new(reader: TcpMetricsReader, model: watch::Receiver<Arc<ClusterModel>>) -> Self {
        Self {
            reader: Mutex::new(reader),
            model,
        }
    }
}

impl std::fmt::Debug for KernelTcpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelTcpMetrics")
    }
}

/// Each scrape reads the kernel's pairs (a few syscalls per pair) through the handles kept open
/// and encodes them directly.
impl Collector for KernelTcpMetrics {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let flows = match self.reader.lock().map(|r| r.read()) {
            Ok(Ok(f)) => f,
            Ok(Err(error)) => {
                debug!(%error, "kernel TCP metrics unreadable");
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
        let model = self.model.borrow().clone();
        encode_flows(&flows, &model, encoder)
    }
}

/// The four families for `flows`, pairs that map to the same labels added together (so the
/// series are per workload pair and service, whatever the pods' addresses).
pub fn encode_flows(
    flows: &[FlowTotals],
    model: &ClusterModel,
    mut encoder: DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let pods: BTreeMap<Ipv4Addr, &Pod> = model
        .pods
        .values()
        .filter_map(|p| p.ip.map(|ip| (ip, p)))
        .collect();
    let mut series: BTreeMap<Labels, TcpFlowStats> = BTreeMap::new();
    for f in flows {
        let labels = labels(
            pods.get(&f.client).copied(),
            pods.get(&f.backend).copied(),
            f.service.as_deref(),
        );
        let acc = series.entry(labels).or_default();
        acc.opened += f.stats.opened;
        acc.closed += f.stats.closed;
        acc.sent_bytes += f.stats.sent_bytes;
        acc.received_bytes += f.stats.received_bytes;
    }
    let families: [Family; 4] = [
        (
            "istio_tcp_connections_opened",
            "TCP connections opened (kernel path)",
            |s| s.opened,
        ),
        (
            "istio_tcp_connections_closed",
            "TCP connections closed (kernel path)",
            |s| s.closed,
        ),
        (
            "istio_tcp_sent_bytes",
            "Bytes the client sent, acknowledged by the server (kernel path)",
            |s| s.sent_bytes,
        ),
        (
            "istio_tcp_received_bytes",
            "Bytes the client received (kernel path)",
            |s| s.received_bytes,
        ),
    ];
    for (name, help, value) in families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, stats) in &series {
            ConstCounter::new(value(stats)).encode(family.encode_family(labels)?)?;
        }
    }
    Ok(())
}

/// Istio's TCP label set, in istio/proxy's order. `reporter="source"`: the kernel measures the
/// client's socket. No mTLS on the kernel path, and no response flags for a plain connection.
fn labels(source: Option<&Pod>, dest: Option<&Pod>, service: Option<&str>) -> Labels {
    let (svc_name, svc_ns) = service
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.split_once('/'))
        .map(|(ns, name)| (name.to_owned(), ns.to_owned()))
        .unwrap_or_else(|| (UNKNOWN.to_owned(), UNKNOWN.to_owned()));
    let dest_service = if svc_name == UNKNOWN {
        UNKNOWN.to_owned()
    } else {
        format!("{svc_name}.{svc_ns}.svc.cluster.local")
    };
    let mut l: Labels = vec![("reporter", "source".to_owned())];
    push_workload(&mut l, "source", source);
    l.push(("source_cluster", UNKNOWN.to_owned()));
    push_workload(&mut l, "destination", dest);
    l.push(("destination_service", dest_service));
    l.push(("destination_service_name", svc_name));
    l.push(("destination_service_namespace", svc_ns));
    l.push(("destination_cluster", UNKNOWN.to_owned()));
    l.push(("request_protocol", "tcp".to_owned()));
    l.push(("response_flags", "-".to_owned()));
    l.push(("connection_security_policy", UNKNOWN.to_owned()));
    l
}

fn push_workload(l: &mut Labels, side: &'static str, pod: Option<&Pod>) {
    let label = |k: &str| pod.and_then(|p| p.labels.get(k)).cloned();
    let workload = pod.map(|p| p.workload.clone());
    let app = label("app");
    let version = label("version");
    let canonical = label("service.istio.io/canonical-name")
        .or_else(|| label("app.kubernetes.io/name"))
        .or_else(|| app.clone())
        .or_else(|| workload.clone());
    let revision = label("service.istio.io/canonical-revision")
        .or_else(|| label("app.kubernetes.io/version"))
        .or_else(|| version.clone())
        .unwrap_or_else(|| "latest".to_owned());
    let (w, c, r, ns, p, a, v) = match side {
        "source" => (
            "source_workload",
            "source_canonical_service",
            "source_canonical_revision",
            "source_workload_namespace",
            "source_principal",
            "source_app",
            "source_version",
        ),
        _ => (
            "destination_workload",
            "destination_canonical_service",
            "destination_canonical_revision",
            "destination_workload_namespace",
            "destination_principal",
            "destination_app",
            "destination_version",
        ),
    };
    let or_unknown = |v: Option<String>| v.unwrap_or_else(|| UNKNOWN.to_owned());
    l.push((w, or_unknown(workload)));
    l.push((c, or_unknown(canonical)));
    l.push((
        r,
        if pod.is_some() {
            revision
        } else {
            UNKNOWN.to_owned()
        },
    ));
    l.push((ns, or_unknown(pod.map(|p| p.id.namespace.clone()))));
    l.push((p, UNKNOWN.to_owned()));
    l.push((a, or_unknown(app)));
    l.push((v, or_unknown(version)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_model::ObjectRef;

    /// `workload` as the sources name it (`Pod::workload`): a Deployment's pods share one.
    fn pod(name: &str, workload: &str, ip: [u8; 4], labels: &[(&str, &str)]) -> Pod {
        Pod {
            id: ObjectRef::new("shop", name),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ip: Some(Ipv4Addr::from(ip)),
            container_ports: vec![],
            placement: Default::default(),
            workload: workload.to_owned(),
            trace_sampling_hundredths: None,
            socket_redirect: None,
        }
    }

    #[test]
    fn pairs_become_istio_series_with_every_label() {
        let mut model = ClusterModel::default();
        for p in [
            pod(
                "client-7d9f-abcde",
                "client",
                [10, 0, 0, 1],
                &[
                    ("app", "client"),
                    ("version", "v1"),
                    ("pod-template-hash", "7d9f"),
                ],
            ),
            // A second pod of the same Deployment: its pairs join the first one's series.
            pod(
                "client-7d9f-fghij",
                "client",
                [10, 0, 0, 3],
                &[
                    ("app", "client"),
                    ("version", "v1"),
                    ("pod-template-hash", "7d9f"),
                ],
            ),
            pod("server", "server", [10, 0, 0, 2], &[("app", "server")]),
        ] {
            model.pods.insert(p.id.clone(), p);
        }
        let stats = TcpFlowStats {
            opened: 3,
            closed: 2,
            sent_bytes: 100,
            received_bytes: 200,
        };
        let flows = [
            FlowTotals {
                client: Ipv4Addr::new(10, 0, 0, 1),
                backend: Ipv4Addr::new(10, 0, 0, 2),
                backend_port: 80,
                service: Some("shop/server:http".into()),
                stats,
            },
            FlowTotals {
                client: Ipv4Addr::new(10, 0, 0, 3),
                backend: Ipv4Addr::new(10, 0, 0, 2),
                backend_port: 80,
                service: Some("shop/server:http".into()),
                stats,
            },
            // An address no pod has: every label still there, as unknown.
            FlowTotals {
                client: Ipv4Addr::new(10, 9, 9, 9),
                backend: Ipv4Addr::new(10, 0, 0, 2),
                backend_port: 80,
                service: None,
                stats,
            },
        ];
        #[derive(Debug)]
        struct Fixed(Vec<FlowTotals>, ClusterModel);
        impl Collector for Fixed {
            fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                encode_flows(&self.0, &self.1, encoder)
            }
        }
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Fixed(flows.to_vec(), model)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let known = r#"istio_tcp_sent_bytes_total{reporter="source",source_workload="client",source_canonical_service="client",source_canonical_revision="v1",source_workload_namespace="shop",source_principal="unknown",source_app="client",source_version="v1",source_cluster="unknown",destination_workload="server",destination_canonical_service="server",destination_canonical_revision="latest",destination_workload_namespace="shop",destination_principal="unknown",destination_app="server",destination_version="unknown",destination_service="server.shop.svc.cluster.local",destination_service_name="server",destination_service_namespace="shop",destination_cluster="unknown",request_protocol="tcp",response_flags="-",connection_security_policy="unknown"} 200"#;
        assert!(text.lines().any(|l| l == known), "{text}");
        let unknown = text
            .lines()
            .find(|l| {
                l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains(r#"source_workload="unknown""#)
            })
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(unknown.matches("=\"").count(), 23, "{unknown}");
        assert!(unknown.ends_with(" 3"), "{unknown}");
    }
}
