//! A rolling update of the DaemonSet under load: the client pod sends requests to a Service's
//! ClusterIP at a fixed rate (10 a second, each a new connection whose connect() the pinned
//! programs translate) while the DaemonSet's image changes to another tag of the same image. The
//! old agent stops and the new one starts on the node; the pinned programs must keep serving in
//! between, so the figure is the number of requests that failed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshpath_tests::poll;

use crate::node::{kubectl_path, RealNode};

/// The load: one HTTP/1.0 GET per 100 ms, each a new connection; counts in /tmp/count as it
/// goes, the totals on stdout when /tmp/stop appears.
const LOAD: &str = r#"ok=0; fail=0; rm -f /tmp/stop
while [ ! -e /tmp/stop ]; do
  if printf 'GET / HTTP/1.0\r\nHost: web\r\n\r\n' | nc -w 2 HOST PORT | head -n1 | grep -q ' 200 '; then
    ok=$((ok+1))
  else
    fail=$((fail+1)); echo "failed at $(date +%T)"
  fi
  echo "$ok $fail" > /tmp/count
  usleep 100000
done
echo "total ok=$ok failed=$fail""#;

pub struct Rollout {
    pub ok: u32,
    pub failed: u32,
    /// From the image change until `kubectl rollout status` saw the new pod ready.
    pub rollout: Duration,
    pub log: String,
}

impl RealNode {
    /// (ok, failed) so far, from the client pod's /tmp/count.
    fn load_count(&self) -> Option<(u32, u32)> {
        let out = self.kubectl(&["exec", "client", "--", "cat", "/tmp/count"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut it = text.split_whitespace().map(|n| n.parse::<u32>().ok());
        Some((it.next()??, it.next()??))
    }
}

/// Runs the load against `addr` (ClusterIP:port), changes the DaemonSet's image tag to `tag`,
/// and counts the failed requests from before the change until 3 s after the new agent is ready.
pub fn rolling_update_under_load(node: &RealNode, addr: &str, tag: &str) -> Rollout {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let script = LOAD.replace("HOST", host).replace("PORT", port);
    let _ = node.kubectl(&["exec", "client", "--", "rm", "-f", "/tmp/count"]);
    let load = Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(&node.kubeconfig)
        .args(["exec", "client", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl exec of the load");
    let started = poll(Duration::from_secs(30), || {
        node.load_count().filter(|(ok, _)| *ok >= 5)
    });
    assert!(started.is_some(), "the load never got 5 answers");

    let tagged = node.script("node.sh", &["tag-agent", tag]);
    assert!(
        tagged.status.success(),
        "node.sh tag-agent: {}",
        String::from_utf8_lossy(&tagged.stderr)
    );
    let old_pod = node.kubectl_ok(&["-n", "meshpath-system", "get", "pods", "-o", "name"]);
    let t0 = Instant::now();
    let image = format!("meshpath:{tag}");
    node.kubectl_ok(&[
        "-n",
        "meshpath-system",
        "set",
        "image",
        "ds/meshpath",
        &format!("agent={image}"),
        &format!("mount-bpffs={image}"),
    ]);
    node.kubectl_ok(&[
        "-n",
        "meshpath-system",
        "rollout",
        "status",
        "ds/meshpath",
        "--timeout=180s",
    ]);
    let rollout = t0.elapsed();
    let new_pod = node.kubectl_ok(&["-n", "meshpath-system", "get", "pods", "-o", "name"]);
    assert_ne!(
        old_pod, new_pod,
        "the rollout did not replace the agent's pod"
    );
    let images = node.kubectl_ok(&[
        "-n",
        "meshpath-system",
        "get",
        "pods",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert_eq!(images.trim(), image, "agent pods after the rollout");

    // 3 s of traffic (30 requests) on the new agent, then stop.
    let (ok_at_ready, _) = node.load_count().expect("load count");
    let more = poll(Duration::from_secs(30), || {
        node.load_count().filter(|(ok, _)| *ok >= ok_at_ready + 30)
    });
    assert!(more.is_some(), "the load stalled after the rollout");
    node.kubectl_ok(&["exec", "client", "--", "touch", "/tmp/stop"]);
    let out = load.wait_with_output().expect("the load's output");
    let log = String::from_utf8_lossy(&out.stdout).into_owned();
    let total = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("total "))
        .unwrap_or_else(|| panic!("no totals from the load: {log}"));
    let num = |key: &str| -> u32 {
        total
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {total:?}"))
    };
    Rollout {
        ok: num("ok="),
        failed: num("failed="),
        rollout,
        log,
    }
}
