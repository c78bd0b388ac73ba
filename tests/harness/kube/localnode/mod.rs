//! A local Kubernetes node that really runs Deployments: the harness's control plane
//! ([`KubeCluster`]), a [`Node`] (bridge, managed cgroup) and a kubelet loop on a background
//! thread that binds pods to the node and runs each as a process group in its own network
//! namespace and cgroup, started from the image table of [`images`]. Pods are processes, not
//! containers: no image is pulled, the filesystem is the host's, volumes are projected under the
//! pod's own root directory (see [`images`] for how an app is told where).
//!
//! What the kubelet loop does is described in `kubelet.rs`; pods resolve names through the
//! cluster's resolver (kube-dns's ClusterIP [`KUBE_DNS_IP`], whose queries the meshpath agent
//! answers when started with [`LocalNode::start_agent`]).
//!
//! Dropping a [`LocalNode`] stops the loop, then every pod (process group killed, namespace and
//! cgroup removed), then the node and the control plane.

mod base64;
pub mod images;
mod kubelet;
mod podproc;
mod spec;
mod status;
mod volume;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::agent::Agent;
use crate::kube::{KubeCluster, RunningPod};
use crate::node_agent::{Proxy, Source};
use crate::pod::Pod;
use crate::Node;

/// kube-dns's ClusterIP: the pods' nameserver (a Service without endpoints: the agent answers).
pub const KUBE_DNS_IP: &str = "10.96.0.10";
/// The Node object's name.
pub const LOCAL_NODE_NAME: &str = "meshpath-local";

/// State shared by the API side ([`LocalNode`]) and the kubelet thread.
pub(crate) struct Shared {
    kube: Arc<KubeCluster>,
    node: Arc<Node>,
    node_name: String,
    stop: AtomicBool,
    /// Pods that cannot start, by `namespace/name`: the message naming pod and object, and the
    /// sync round that last found it.
    errors: Mutex<BTreeMap<String, (String, u64)>>,
    /// Sync rounds started so far: an error counts for a waiter only if a round that began
    /// after the wait began found it (the user may just have fixed the cause).
    rounds: AtomicU64,
    /// Log file of every pod started, by `namespace/name`.
    logs: Mutex<BTreeMap<String, PathBuf>>,
    loop_errors: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    fn set_error(&self, key: &str, msg: String) {
        let round = self.rounds.load(Ordering::SeqCst);
        let mut errors = lock(&self.errors);
        if errors.get(key).map(|(m, _)| m) != Some(&msg) {
            eprintln!("meshpath-tests: local node: {msg}");
        }
        errors.insert(key.to_owned(), (msg, round));
    }
    fn begin_round(&self) {
        self.rounds.fetch_add(1, Ordering::SeqCst);
    }
    fn clear_error(&self, key: &str) {
        lock(&self.errors).remove(key);
    }
    fn set_log(&self, key: &str, path: PathBuf) {
        lock(&self.logs).insert(key.to_owned(), path);
    }
    fn note_loop_error(&self, msg: String) {
        eprintln!("meshpath-tests: local node kubelet: {msg}");
        let mut errs = lock(&self.loop_errors);
        errs.push(msg);
        let n = errs.len();
        errs.drain(..n.saturating_sub(20));
    }
}

/// See the module docs. Fields drop in order after [`Drop::drop`] stopped the kubelet thread.
pub struct LocalNode {
    kubelet: Option<JoinHandle<()>>,
    client: Pod,
    shared: Arc<Shared>,
}

impl LocalNode {
    /// Start the control plane, create the node (bridge, cgroup, client pod) and kube-dns's
    /// Service, register the Node object and start the kubelet loop. The seed's apps are built
    /// (or found in their cache) meanwhile.
    pub fn start() -> Result<LocalNode> {
        let build = std::thread::spawn(|| images::seed_app_launchers().map(drop));
        let node = Node::new(1).context("creating the local node")?;
        let kube = KubeCluster::start()?;
        kube.kubelet(LOCAL_NODE_NAME)
            .context("registering the local node")?;
        kube.apply_yaml(&format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: kube-dns\n  namespace: kube-system\n\
             spec:\n  clusterIP: {KUBE_DNS_IP}\n  ports:\n  - {{name: dns, port: 53, protocol: UDP}}\n  \
             - {{name: dns-tcp, port: 53, protocol: TCP}}\n"
        ))
        .context("creating kube-dns's Service")?;
        let resolv = node.work_dir().join("client-resolv.conf");
        std::fs::write(
            &resolv,
            format!(
                "nameserver {KUBE_DNS_IP}\nsearch default.svc.cluster.local svc.cluster.local \
                 cluster.local\noptions ndots:5\n"
            ),
        )?;
        let client = node.pod(0).with_resolv_conf(resolv);
        match build.join() {
            Ok(r) => r?,
            Err(_) => bail!("building the seed's apps panicked"),
        }
        let shared = Arc::new(Shared {
            kube: Arc::new(kube),
            node: Arc::new(node),
            node_name: LOCAL_NODE_NAME.to_owned(),
            stop: AtomicBool::new(false),
            errors: Mutex::default(),
            rounds: AtomicU64::new(0),
            logs: Mutex::default(),
            loop_errors: Mutex::default(),
        });
        let s = Arc::clone(&shared);
        let kubelet = std::thread::Builder::new()
            .name("local-kubelet".into())
            .spawn(move || kubelet::Kubelet::default().run(&s))?;
        Ok(LocalNode {
            kubelet: Some(kubelet),
            client,
            shared,
        })
    }

    /// The control plane (apply_yaml, kubectl_ok, kubeconfig, ...).
    pub fn kube(&self) -> &KubeCluster {
        &self.shared.kube
    }

    /// The node: bridge, managed cgroup, work dir.
    pub fn node(&self) -> &Node {
        &self.shared.node
    }

    /// The Node object's name.
    pub fn node_name(&self) -> &str {
        &self.shared.node_name
    }

    /// Run the real kubectl with this cluster's kubeconfig; its stdout, or an error with stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kube().kubectl_ok(args)
    }

    /// `kubectl apply -f <dir>`.
    pub fn apply_dir(&self, dir: &Path) -> Result<()> {
        let dir = dir.to_str().context("directory path is not UTF-8")?;
        self.kubectl(&["apply", "-f", dir]).map(drop)
    }

    /// Wait until exactly `n` pods matching `selector` in `ns` exist (not terminating) and all
    /// are Ready; returns them sorted by name. Fails at once, naming the pod and the object, when
    /// one of them cannot start (unmapped image, missing ConfigMap key, ...).
    pub fn wait_ready(
        &self,
        ns: &str,
        selector: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RunningPod>> {
        let what = format!("{n} pods {selector} in {ns} are Ready on the local node");
        let mut failed = None;
        // Rounds already running may report a cause fixed just before this call.
        let first_round = self.shared.rounds.load(Ordering::SeqCst) + 1;
        let r = self.kube().poll_until(&what, timeout, || {
            let list = self.kube().get_json(&["pods", "-n", ns, "-l", selector])?;
            let mut pods = Vec::new();
            for p in list["items"].as_array().into_iter().flatten() {
                if !p["metadata"]["deletionTimestamp"].is_null() {
                    continue;
                }
                let name = p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let errors = lock(&self.shared.errors);
                let error = errors.get(&format!("{ns}/{name}"));
                if let Some((e, _)) = error.filter(|(_, round)| *round >= first_round) {
                    failed = Some(e.clone());
                    return Ok(Some(Vec::new()));
                }
                let ip = ready_ip(p);
                pods.push((name, ip));
            }
            if pods.len() != n || pods.iter().any(|(_, ip)| ip.is_none()) {
                return Ok(None);
            }
            let mut out: Vec<RunningPod> = pods
                .into_iter()
                .map(|(name, ip)| RunningPod {
                    name,
                    ip: ip.expect("checked"),
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Some(out))
        });
        if let Some(e) = failed {
            bail!("{e}");
        }
        r.map_err(|e| {
            let pods = self
                .kubectl(&["get", "pods", "-A", "-o", "wide"])
                .unwrap_or_default();
            e.context(format!("pods now:\n{pods}"))
        })
    }

    /// Start `meshpath agent --source kube` on this node: attached to the node's managed cgroup
    /// (all pods and the client), node proxy on, DNS capture on, plus `extra`.
    pub fn start_agent(&self, extra: &[&str]) -> Result<Agent> {
        let mut args = vec!["--dns-capture", "true"];
        args.extend_from_slice(extra);
        self.node().start_agent(
            Source::Kube {
                cluster: self.kube(),
                node_name: &self.shared.node_name,
            },
            Proxy::On,
            &args,
        )
    }

    /// A client pod (the node's pod 0, in the managed cgroup, with the cluster's resolv.conf):
    /// run curl, fortio or HTTP clients from it with [`Pod::command`].
    pub fn client(&self) -> &Pod {
        &self.client
    }

    /// stdout and stderr of a pod's process (all its restarts); empty if it never started.
    pub fn pod_log(&self, ns: &str, pod: &str) -> String {
        lock(&self.shared.logs)
            .get(&format!("{ns}/{pod}"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Messages of the pods that cannot start (`pod <ns>/<name> (image ...): <why>`).
    pub fn pod_errors(&self) -> Vec<String> {
        lock(&self.shared.errors)
            .values()
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// The last errors of the kubelet loop itself (API unreachable, ...), newest last.
    pub fn kubelet_errors(&self) -> Vec<String> {
        lock(&self.shared.loop_errors).clone()
    }
}

/// The podIP of a pod whose Ready condition is True.
fn ready_ip(pod: &Value) -> Option<std::net::Ipv4Addr> {
    let ready = pod["status"]["conditions"]
        .as_array()?
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    if !ready {
        return None;
    }
    pod["status"]["podIP"].as_str()?.parse().ok()
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.kubelet.take() {
            // The thread stops every pod before it returns.
            if t.join().is_err() {
                // The thread died without stopping its pods: remove their namespaces here
                // (their processes go with the node's cgroups).
                let prefix = format!("{}-k", self.shared.node.id().base());
                for ns in crate::net::list_netns() {
                    if ns.starts_with(&prefix) {
                        let _ = crate::net::del_netns(&ns);
                    }
                }
            }
        }
        if std::thread::panicking() {
            let agent_log = self.shared.node.work_dir().join("agent.log");
            if let Ok(text) = std::fs::read_to_string(&agent_log) {
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- local node: {} (tail) ---", agent_log.display());
                for l in &lines[lines.len().saturating_sub(60)..] {
                    eprintln!("{l}");
                }
            }
            // The kernel's view at the failure: services, backends and the reason counters (the
            // pins outlive the agent).
            let pin_dir = self.shared.node.pin_dir().display().to_string();
            match crate::agent::meshpath(["status", "--pin-dir", pin_dir.as_str()]) {
                Ok(text) => eprintln!("--- local node: meshpath status ---\n{text}"),
                Err(e) => eprintln!("--- local node: meshpath status failed: {e:#}"),
            }
            for (key, path) in lock(&self.shared.logs).iter() {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- local node: log of pod {key} ---");
                for l in &lines[lines.len().saturating_sub(30)..] {
                    eprintln!("{l}");
                }
            }
        }
        // `shared` (node, then control plane) drops with the last Arc, which is ours now.
    }
}
