//! Kubernetes YAML for tests, written the way users write it, into the agent's manifests dir.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct Ep {
    pub ip: Ipv4Addr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Ep {
    pub fn ready(ip: Ipv4Addr) -> Ep {
        Ep {
            ip,
            ready: true,
            serving: true,
            terminating: false,
        }
    }
    pub fn not_ready(ip: Ipv4Addr) -> Ep {
        Ep {
            ip,
            ready: false,
            serving: false,
            terminating: false,
        }
    }
}

/// A ClusterIP Service with one port (`name`, `port` → `target_port`, `protocol`).
pub fn service(
    name: &str,
    cluster_ip: &str,
    port: u16,
    target_port: &str,
    protocol: &str,
    extra_spec: &str,
) -> String {
    let mut y = String::new();
    let _ = write!(
        y,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {cluster_ip}\n  \
         ports:\n  - name: p\n    port: {port}\n    targetPort: {target_port}\n    protocol: {protocol}\n  selector:\n    app: {name}\n"
    );
    y.push_str(extra_spec);
    y
}

/// An EndpointSlice for `service`, port named like the Service port ("p").
pub fn endpoint_slice(service: &str, port: u16, protocol: &str, endpoints: &[Ep]) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  namespace: default\n  \
         labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n- name: p\n  port: {port}\n  protocol: {protocol}\nendpoints:\n"
    );
    if endpoints.is_empty() {
        y = y.replace("endpoints:\n", "endpoints: []\n");
    }
    for e in endpoints {
        let _ = write!(
            y,
            "- addresses: [\"{}\"]\n  conditions:\n    ready: {}\n    serving: {}\n    terminating: {}\n",
            e.ip, e.ready, e.serving, e.terminating
        );
    }
    y
}

/// Joins documents into one multi-document file.
pub fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}

/// Writes a manifest atomically (write + rename), as editors and `kubectl cp` do, so the agent never
/// reads half a file.
pub fn write(dir: &Path, file: &str, content: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, dir.join(file))?;
    Ok(())
}
