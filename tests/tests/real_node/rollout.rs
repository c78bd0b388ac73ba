//! A rolling update of the DaemonSet under load: the client pod sends requests to Services'
//! ClusterIPs at a fixed rate (10 a second per load, each a new connection whose connect() the
//! pinned programs translate) while the DaemonSet's image changes to another tag of the same
//! image. The old agent stops and the new one starts on the node; the pinned programs must keep
//! serving in between, so the figures are the requests that failed and, for a Service a
//! VirtualService steers to the node's proxy, those answered without its route.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshpath_tests::poll;

use crate::node::{kubectl_path, RealNode};

/// The load: one HTTP/1.0 GET per 100 ms, each a new connection; a 200 whose response contains
/// WANT is ok, another 200 is `other` (answered, but not by the route the test expects), anything
/// else failed. Counts in /tmp/count-NAME as it goes, the totals on stdout when /tmp/stop
/// appears.
const LOAD: &str = r#"ok=0; fail=0; other=0
while [ ! -e /tmp/stop ]; do
  r=$(printf 'GET / HTTP/1.0\r\nHost: web\r\n\r\n' | nc -w 2 HOST PORT)
  case "$r" in
    *" 200 "*WANT*) ok=$((ok+1)) ;;
    *" 200 "*) other=$((other+1)); echo "other at $(date +%T), #$((ok+fail+other))" ;;
    *) fail=$((fail+1)); echo "failed at $(date +%T), #$((ok+fail+other))" ;;
  esac
  echo "$ok $fail $other" > /tmp/count-NAME
  usleep 100000
done
echo "total ok=$ok failed=$fail other=$other""#;

/// One load of the rolling update: its name, the ClusterIP:port it sends to, and what the
/// expected answer contains.
pub struct Load<'a> {
    pub name: &'a str,
    pub addr: &'a str,
    pub want: &'a str,
}

#[derive(Debug)]
pub struct Counts {
    pub ok: u32,
    pub failed: u32,
    /// Answered 200, but not with the expected body.
    pub other: u32,
    /// Failed or `other` requests sent after `kubectl rollout status` saw the new agent ready.
    pub after_ready: u32,
    pub log: String,
}

impl Counts {
    pub fn total(&self) -> u32 {
        self.ok + self.failed + self.other
    }
}

pub struct Rollout {
    /// Each load's counts, in the order given.
    pub loads: Vec<Counts>,
    /// From the image change until `kubectl rollout status` saw the new pod ready.
    pub rollout: Duration,
    /// The old agent's log from its SIGTERM on and the new agent's first lines until its proxy
    /// listened, with the kubelet's timestamps: where the handover's time went.
    pub timeline: String,
}

impl RealNode {
    /// (ok, sent) so far of the load `name`, from the client pod's /tmp/count-NAME.
    fn load_count(&self, name: &str) -> Option<(u32, u32)> {
        let path = format!("/tmp/count-{name}");
        let out = self.kubectl(&["exec", "client", "--", "cat", &path]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let n: Vec<u32> = text
            .split_whitespace()
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        (n.len() == 3).then(|| (n[0], n[0] + n[1] + n[2]))
    }
}

fn wait_ok(node: &RealNode, loads: &[Load], at_least: &[u32], what: &str) {
    for (l, min) in loads.iter().zip(at_least) {
        let reached = poll(Duration::from_secs(30), || {
            node.load_count(l.name).filter(|(ok, _)| ok >= min)
        });
        assert!(reached.is_some(), "load {}: {what}", l.name);
    }
}

/// Runs the loads, changes the DaemonSet's image tag to `tag`, and counts each load's answers
/// from before the change until 3 s after the new agent is ready.
pub fn rolling_update_under_load(node: &RealNode, loads: &[Load], tag: &str) -> Rollout {
    let _ = node.kubectl(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        "rm -f /tmp/stop /tmp/count-*",
    ]);
    let running: Vec<_> = loads
        .iter()
        .map(|l| {
            let (host, port) = l.addr.rsplit_once(':').expect("host:port");
            let script = LOAD
                .replace("HOST", host)
                .replace("PORT", port)
                .replace("WANT", l.want)
                .replace("NAME", l.name);
            Command::new(kubectl_path())
                .arg("--kubeconfig")
                .arg(&node.kubeconfig)
                .args(["exec", "client", "--", "sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("kubectl exec of the load")
        })
        .collect();
    wait_ok(
        node,
        loads,
        &vec![5; loads.len()],
        "never got 5 expected answers",
    );

    let tagged = node.script("node.sh", &["tag-agent", tag]);
    assert!(
        tagged.status.success(),
        "node.sh tag-agent: {}",
        String::from_utf8_lossy(&tagged.stderr)
    );
    let old_pod = node.kubectl_ok(&["-n", "meshpath-system", "get", "pods", "-o", "name"]);
    // The old agent's log, followed until its container ends (pods are gone with their logs).
    let old_log = Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(&node.kubeconfig)
        .args([
            "-n",
            "meshpath-system",
            "logs",
            "-f",
            "--timestamps",
            "-c",
            "agent",
        ])
        .arg(old_pod.trim())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
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
    let sent_at_ready: Vec<u32> = loads
        .iter()
        .map(|l| node.load_count(l.name).expect("load count").1)
        .collect();
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

    // 3 s of traffic (30 requests each) on the new agent, then stop.
    let at_ready: Vec<u32> = loads
        .iter()
        .map(|l| node.load_count(l.name).expect("load count").0 + 30)
        .collect();
    wait_ok(node, loads, &at_ready, "stalled after the rollout");
    node.kubectl_ok(&["exec", "client", "--", "touch", "/tmp/stop"]);
    let loads = running
        .into_iter()
        .zip(sent_at_ready)
        .map(|(child, sent_at_ready)| {
            let out = child.wait_with_output().expect("the load's output");
            let log = String::from_utf8_lossy(&out.stdout).into_owned();
            let total = log
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("total "))
                .unwrap_or_else(|| panic!("no totals from the load: {log}"))
                .to_owned();
            let num = |key: &str| -> u32 {
                total
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("{key} in {total:?}"))
            };
            // Each failed or `other` line ends with the request's number: `..., #<n>`.
            let after_ready = log
                .lines()
                .filter_map(|l| l.rsplit_once(", #")?.1.parse::<u32>().ok())
                .filter(|n| *n > sent_at_ready)
                .count() as u32;
            Counts {
                ok: num("ok="),
                after_ready,
                failed: num("failed="),
                other: num("other="),
                log,
            }
        })
        .collect();
    let timeline = timeline(node, old_log, new_pod.trim());
    Rollout {
        loads,
        rollout,
        timeline,
    }
}

/// The old agent's lines from SIGTERM on, then the new agent's up to its first open proxy
/// listener (and the programmed state after it).
fn timeline(node: &RealNode, mut old_log: std::process::Child, new_pod: &str) -> String {
    // The stream ends with the old container; it has ended by now, or it is cut.
    let ended = poll(Duration::from_secs(10), || {
        old_log.try_wait().ok().flatten()
    });
    if ended.is_none() {
        let _ = old_log.kill();
    }
    let out = old_log.wait_with_output().expect("kubectl logs -f");
    let old = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines: Vec<String> = old
        .lines()
        .skip_while(|l| !l.contains("SIGTERM"))
        .map(|l| format!("old {l}"))
        .collect();
    let new = node.kubectl(&[
        "-n",
        "meshpath-system",
        "logs",
        "--timestamps",
        "-c",
        "agent",
        new_pod,
    ]);
    let new = String::from_utf8_lossy(&new.stdout).into_owned();
    let mut new_lines = new.lines();
    lines.extend(new_lines.next().map(|l| format!("new {l}")));
    let mut listening = false;
    for l in new_lines {
        let open = l.contains("proxy listener open");
        if open && listening {
            continue;
        }
        if open || l.contains(" programmed") || l.contains("attached") {
            lines.push(format!("new {l}"));
        }
        listening |= open;
        if listening && l.contains(" programmed") {
            break;
        }
    }
    lines.join("\n")
}
