//! What the local node's kubelet writes to the API: pod status (phase, podIP, conditions,
//! container state) and Warning events, shaped as a kubelet's so `kubectl get/describe` read as
//! usual and the EndpointSlice controller publishes ready pods.

use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde_json::{json, Value};

use crate::kube::kubelet::now_rfc3339;
use crate::kube::KubeCluster;

/// The container state to report.
pub(super) enum Reported<'a> {
    /// Not started: waiting with a reason (`CreateContainerConfigError`, ...) and message.
    Waiting { reason: &'a str, message: &'a str },
    /// Running; `ready` once the container port accepts connections.
    Running {
        ip: Ipv4Addr,
        ready: bool,
        restarts: u32,
    },
    /// Exited and waiting to be restarted.
    CrashLoop {
        ip: Ipv4Addr,
        exit_code: i32,
        restarts: u32,
    },
}

/// The `status` body (for a merge patch of the status subresource).
pub(super) fn pod_status(pod: &Value, state: &Reported<'_>) -> Value {
    let now = now_rfc3339();
    let cond = |t: &str, ok: bool| {
        let mut c = json!({"type": t, "status": if ok {"True"} else {"False"},
                           "lastTransitionTime": now});
        if !ok {
            c["reason"] = json!("ContainersNotReady");
        }
        c
    };
    let ready = matches!(state, Reported::Running { ready: true, .. });
    let c = &pod["spec"]["containers"][0];
    let (container_state, restarts, last) = match state {
        Reported::Waiting { reason, message } => (
            json!({"waiting": {"reason": reason, "message": message}}),
            0,
            Value::Null,
        ),
        Reported::Running { restarts, .. } => (
            json!({"running": {"startedAt": now}}),
            *restarts,
            Value::Null,
        ),
        Reported::CrashLoop {
            exit_code,
            restarts,
            ..
        } => (
            json!({"waiting": {"reason": "CrashLoopBackOff",
                               "message": format!("exited with code {exit_code}")}}),
            *restarts,
            json!({"terminated": {"exitCode": exit_code, "reason": "Error", "finishedAt": now}}),
        ),
    };
    let mut status = json!({
        "phase": if matches!(state, Reported::Waiting { .. }) { "Pending" } else { "Running" },
        "startTime": pod["status"]["startTime"].as_str().unwrap_or(&now),
        "conditions": [cond("PodScheduled", true), cond("Initialized", true),
                       cond("ContainersReady", ready), cond("Ready", ready)],
        "containerStatuses": [{
            "name": c["name"], "image": c["image"], "imageID": "",
            "containerID": if matches!(state, Reported::Waiting { .. }) { Value::Null }
                           else { json!(format!("meshpath-local://{}", c["name"].as_str().unwrap_or(""))) },
            "ready": ready, "started": matches!(state, Reported::Running { .. }),
            "restartCount": restarts, "state": container_state, "lastState": last,
        }],
    });
    if let Reported::Running { ip, .. } | Reported::CrashLoop { ip, .. } = state {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{"ip": ip.to_string()}]);
    }
    json!({ "status": status })
}

/// A compact fingerprint of what was reported, to patch only on change.
pub(super) fn fingerprint(state: &Reported<'_>) -> String {
    match state {
        Reported::Waiting { reason, message } => format!("waiting {reason} {message}"),
        Reported::Running {
            ip,
            ready,
            restarts,
        } => format!("running {ip} {ready} {restarts}"),
        Reported::CrashLoop { restarts, .. } => format!("crashloop {restarts}"),
    }
}

pub(super) fn patch_status(kube: &KubeCluster, ns: &str, name: &str, body: &Value) -> Result<()> {
    kube.kubectl_ok([
        "patch",
        "pod",
        name,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &body.to_string(),
    ])
    .map(drop)
}

/// A Warning event about `pod`, as the kubelet records one (`kubectl describe pod` and
/// `kubectl get events` show it).
pub(super) fn warn(kube: &KubeCluster, node: &str, pod: &Value, reason: &str, message: &str) {
    let now = now_rfc3339();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = pod["metadata"]["name"].as_str().unwrap_or("pod");
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let container = pod["spec"]["containers"][0]["name"].as_str().unwrap_or("");
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{nanos:x}"), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name,
                           "uid": pod["metadata"]["uid"],
                           "fieldPath": format!("spec.containers{{{container}}}")},
        "reason": reason, "message": message, "type": "Warning", "count": 1,
        "source": {"component": "kubelet", "host": node},
        "firstTimestamp": now, "lastTimestamp": now,
    });
    let out = kube.kubectl_stdin(["create", "-f", "-"], &event.to_string());
    if let Err(e) = out.and_then(|o| crate::kube::kubectl::checked("create event", o)) {
        eprintln!("meshpath-tests: local node: recording event for {ns}/{name}: {e:#}");
    }
}
