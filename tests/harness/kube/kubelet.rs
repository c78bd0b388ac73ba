//! The test plays the kubelet: the test cluster has neither a scheduler nor kubelets, so pods
//! that the real controllers create (Deployment -> ReplicaSet -> Pod) would stay Pending forever.
//! [`FakeKubelet`] does the API side of what a scheduler and a kubelet would do: bind the pod to
//! its node with the `binding` subresource, report it Running and Ready with an IP the test
//! chooses, and finish the deletion of terminating pods. The real EndpointSlice controller then
//! publishes those pods as endpoints, exactly as it would in a cluster.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::KubeCluster;

/// The kubelet of one node of a [`KubeCluster`].
pub struct FakeKubelet<'c> {
    kube: &'c KubeCluster,
    node: String,
}

/// A pod [`FakeKubelet::run_pods`] reported running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningPod {
    pub name: String,
    pub ip: Ipv4Addr,
}

impl<'c> FakeKubelet<'c> {
    /// Create the Node object (the EndpointSlice controller skips pods whose node it does not
    /// know) and report it Ready, as a kubelet registering itself would.
    pub(crate) fn register(kube: &'c KubeCluster, node: &str) -> Result<FakeKubelet<'c>> {
        kube.apply_yaml(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n  labels:\n    \
             kubernetes.io/hostname: {node}\n    kubernetes.io/os: linux\n"
        ))?;
        let now = now_rfc3339();
        let status = json!({"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "meshpath test harness", "lastHeartbeatTime": now,
                            "lastTransitionTime": now}],
            "addresses": [{"type": "Hostname", "address": node}],
        }});
        kube.kubectl_ok([
            "patch",
            "node",
            node,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])?;
        Ok(FakeKubelet {
            kube,
            node: node.to_owned(),
        })
    }

    /// Name of the Node this kubelet runs.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Wait until exactly `ips.len()` pods that are not terminating match `selector` in
    /// `namespace`, then bind the unbound ones to this node and report every one of them
    /// Running and Ready. Pods that already run keep their IP; the others get the unused
    /// addresses of `ips` in name order. Returns the pods sorted by name.
    pub fn run_pods(
        &self,
        namespace: &str,
        selector: &str,
        ips: &[Ipv4Addr],
        timeout: Duration,
    ) -> Result<Vec<RunningPod>> {
        let what = format!(
            "{} pods {selector} in {namespace} run on {}",
            ips.len(),
            self.node
        );
        self.kube.poll_until(&what, timeout, || {
            let mut live: Vec<Value> = self
                .pods(namespace, selector)?
                .into_iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .collect();
            if live.len() != ips.len() {
                return Ok(None);
            }
            live.sort_by_key(|p| str_at(p, "/metadata/name"));
            let mut free: Vec<Ipv4Addr> = ips
                .iter()
                .filter(|ip| !live.iter().any(|p| running_ip(p) == Some(**ip)))
                .copied()
                .collect();
            free.reverse();
            let mut running = Vec::new();
            for pod in &live {
                let name = str_at(pod, "/metadata/name");
                if str_at(pod, "/spec/nodeName").is_empty() {
                    self.bind(namespace, &name)?;
                }
                let ip = match running_ip(pod).filter(|ip| ips.contains(ip)) {
                    Some(ip) => ip,
                    None => {
                        let ip = free.pop().context("more pods than addresses")?;
                        self.report_running(namespace, pod, ip)?;
                        ip
                    }
                };
                running.push(RunningPod { name, ip });
            }
            Ok(Some(running))
        })
    }

    /// Finish the deletion of every terminating pod matching `selector` in `namespace`, as a
    /// kubelet does once the containers are gone (delete with grace period 0). Returns their
    /// names.
    pub fn finish_terminating(&self, namespace: &str, selector: &str) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for pod in self.pods(namespace, selector)? {
            if pod["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            let name = str_at(&pod, "/metadata/name");
            self.kube.kubectl_ok([
                "delete",
                "pod",
                &name,
                "-n",
                namespace,
                "--grace-period=0",
                "--force",
                "--ignore-not-found",
                "--wait=false",
            ])?;
            done.push(name);
        }
        Ok(done)
    }

    fn pods(&self, namespace: &str, selector: &str) -> Result<Vec<Value>> {
        let list = self
            .kube
            .get_json(&["pods", "-n", namespace, "-l", selector])?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// What the scheduler does: POST pods/<name>/binding.
    fn bind(&self, namespace: &str, name: &str) -> Result<()> {
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        });
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}/binding");
        let out = self
            .kube
            .kubectl_stdin(["create", "--raw", &path, "-f", "-"], &binding.to_string())?;
        super::kubectl::checked(&format!("create --raw {path}"), out).map(drop)
    }

    /// What the kubelet reports once the containers run and pass their readiness checks.
    fn report_running(&self, namespace: &str, pod: &Value, ip: Ipv4Addr) -> Result<()> {
        let now = now_rfc3339();
        let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
        let containers: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|c| {
                json!({
                    "name": c["name"], "image": c["image"], "imageID": "",
                    "containerID": format!("meshpath-test://{}", c["name"].as_str().unwrap_or("")),
                    "ready": true, "started": true, "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                })
            })
            .collect();
        let status = json!({"status": {
            "phase": "Running",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "startTime": now,
            "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"),
                           cond("Ready")],
            "containerStatuses": containers,
        }});
        let name = str_at(pod, "/metadata/name");
        self.kube.kubectl_ok([
            "patch",
            "pod",
            &name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])?;
        Ok(())
    }
}

fn str_at(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The IP of a pod that is already Running and Ready.
fn running_ip(pod: &Value) -> Option<Ipv4Addr> {
    let ready = pod["status"]["conditions"]
        .as_array()?
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    if pod["status"]["phase"] != "Running" || !ready {
        return None;
    }
    pod["status"]["podIP"].as_str()?.parse().ok()
}

/// Current UTC time as RFC 3339 (`2006-01-02T15:04:05Z`), the format of API timestamps.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 UTC, without a date crate.
pub(crate) fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
