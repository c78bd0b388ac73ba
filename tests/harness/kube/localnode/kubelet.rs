//! The local node's kubelet: once a second it lists pods, ConfigMaps and Secrets and brings the
//! node in line. It binds unscheduled pods to the node (there is no scheduler), starts the pods
//! bound to it, reports their status (Ready once the container port accepts connections),
//! re-projects ConfigMap/Secret volumes whose source changed, restarts exited containers with a
//! back-off, and stops pods that are deleted, finishing their deletion in the API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::base64;
use super::podproc::{PodProcess, PodSandbox};
use super::spec::{self, Objects, PodError};
use super::status::{fingerprint, patch_status, pod_status, warn, Reported};
use super::Shared;
use crate::net::MAX_PODS;

/// Kubelet state owned by its thread.
#[derive(Default)]
pub(super) struct Kubelet {
    /// Running pods by uid.
    running: HashMap<String, PodProcess>,
    /// Last status reported per uid (patched only on change).
    reported: HashMap<String, String>,
    /// Next slot to try: round robin, so a just-freed veth name is not reused at once.
    next_slot: usize,
    /// When an exited container may restart (uid → instant).
    restart_at: HashMap<String, Instant>,
    /// Stopped pods whose network namespace stays until the instant: see [`SANDBOX_LINGER`].
    lingering: Vec<(PodSandbox, Instant)>,
}

const SYNC_PERIOD: Duration = Duration::from_secs(1);
/// How long a stopped pod's processes get between SIGTERM and SIGKILL.
const MAX_GRACE: Duration = Duration::from_secs(5);
/// How long a stopped pod's network namespace outlives its processes. Meanwhile a connect to
/// the pod's address is refused at once (nothing listens) instead of vanishing into a removed
/// veth, which would hang clients and the node proxy for a connect timeout while the
/// EndpointSlice change travels to the agent. A real node has the same window between the
/// container's exit and the CNI's teardown, and never reuses the address at once either.
const SANDBOX_LINGER: Duration = Duration::from_secs(5);

impl Kubelet {
    /// Run until `shared.stop` is set, then stop every pod.
    pub fn run(mut self, shared: &Shared) {
        while !shared.stopping() {
            let t0 = Instant::now();
            if let Err(e) = self.sync(shared) {
                // The API may be restarting; the next round retries.
                shared.note_loop_error(format!("{e:#}"));
            }
            while t0.elapsed() < SYNC_PERIOD && !shared.stopping() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for (_, mut p) in self.running.drain() {
            p.stop(Duration::from_secs(1));
            for e in p.sandbox.remove() {
                eprintln!("meshpath-tests: local node cleanup: {e}");
            }
        }
        for (sandbox, _) in self.lingering.drain(..) {
            for e in sandbox.remove() {
                eprintln!("meshpath-tests: local node cleanup: {e}");
            }
        }
    }

    /// Remove the sandboxes whose linger time is over.
    fn reap_lingering(&mut self, shared: &Shared) {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) =
            self.lingering.drain(..).partition(|(_, at)| *at <= now);
        self.lingering = keep;
        for (sandbox, _) in due {
            for e in sandbox.remove() {
                shared.note_loop_error(format!("removing pod {}: {e}", sandbox.pod.label));
            }
        }
    }

    fn sync(&mut self, shared: &Shared) -> Result<()> {
        let kube = &shared.kube;
        shared.begin_round();
        self.reap_lingering(shared);
        let list = kube.get_json(&["pods,configmaps,secrets", "-A"])?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let objects = objects(&items);
        let pods: Vec<&Value> = items.iter().filter(|i| i["kind"] == "Pod").collect();
        let mut seen = HashSet::new();
        for pod in pods {
            let uid = str_at(pod, "/metadata/uid");
            let key = format!(
                "{}/{}",
                str_at(pod, "/metadata/namespace"),
                str_at(pod, "/metadata/name")
            );
            let mut node = str_at(pod, "/spec/nodeName");
            let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
            if node.is_empty() && !terminating {
                bind(shared, pod).with_context(|| format!("binding pod {key}"))?;
                node = shared.node_name.clone();
            }
            if node != shared.node_name {
                continue;
            }
            seen.insert(uid.clone());
            if terminating {
                self.stop_pod(shared, &uid, &key);
                finish_deletion(shared, pod)?;
                continue;
            }
            if let Err(e) = self.sync_pod(shared, pod, &uid, &key, &objects) {
                shared.note_loop_error(format!("pod {key}: {e:#}"));
            }
        }
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|u| !seen.contains(*u))
            .cloned()
            .collect();
        for uid in gone {
            let key = self.running[&uid].sandbox.pod.label.clone();
            self.stop_pod(shared, &uid, &key);
        }
        self.reported.retain(|u, _| seen.contains(u));
        Ok(())
    }

    fn sync_pod(
        &mut self,
        shared: &Shared,
        pod: &Value,
        uid: &str,
        key: &str,
        objects: &Objects,
    ) -> Result<()> {
        let ns = str_at(pod, "/metadata/namespace");
        let name = str_at(pod, "/metadata/name");
        if !self.running.contains_key(uid) {
            let root = shared
                .node
                .work_dir()
                .join("pods")
                .join(key.replace('/', "_"))
                .join("root");
            let resolved = spec::resolve(pod, objects, &root).and_then(|s| {
                let files = s
                    .mounts
                    .iter()
                    .map(|m| spec::volume_files(&ns, &m.source, objects))
                    .collect::<Result<Vec<_>, PodError>>()?;
                Ok((s, files))
            });
            let (run, files) = match resolved {
                Ok(v) => v,
                Err(e) => {
                    let image = str_at(pod, "/spec/containers/0/image");
                    let state = Reported::Waiting {
                        reason: e.reason(),
                        message: &e.to_string(),
                    };
                    if self.report(shared, pod, uid, &state)? {
                        warn(
                            &shared.kube,
                            &shared.node_name,
                            pod,
                            e.reason(),
                            &e.to_string(),
                        );
                    }
                    shared.set_error(key, format!("pod {key} (image {image}): {e}"));
                    return Ok(());
                }
            };
            shared.clear_error(key);
            let slot = self.free_slot()?;
            let search = format!("{ns}.svc.cluster.local svc.cluster.local cluster.local");
            let sandbox = PodSandbox::create(&shared.node, key, uid, slot, &search)?;
            let ip = sandbox.pod.ip;
            let started = PodProcess::start(sandbox, run, &files, &name);
            let p = match started {
                Ok(p) => p,
                Err(e) => {
                    let msg = format!("{e:#}");
                    let state = Reported::Waiting {
                        reason: "CreateContainerError",
                        message: &msg,
                    };
                    if self.report(shared, pod, uid, &state)? {
                        warn(&shared.kube, &shared.node_name, pod, "Failed", &msg);
                    }
                    shared.set_error(key, format!("pod {key}: {msg}"));
                    return Ok(());
                }
            };
            tracing_line(
                key,
                &format!("started {} as pid {:?} at {ip}", p.spec.image, p.pid()),
            );
            shared.set_log(key, p.sandbox.log_path());
            self.running.insert(uid.to_owned(), p);
        }
        let p = self.running.get_mut(uid).expect("inserted above");
        let ip = p.sandbox.pod.ip;
        // Volumes follow their ConfigMap/Secret; a source that lost a key keeps the last good
        // content, as the kubelet does.
        for (i, projected) in &mut p.sandbox.volumes {
            if let Ok(Some(files)) = spec::volume_files(&ns, &p.spec.mounts[*i].source, objects) {
                if projected.write(&files)? {
                    tracing_line(key, &format!("volume {} updated", p.spec.mounts[*i].name));
                }
            }
        }
        if let Some(status) = p.poll_exit() {
            let at = *self.restart_at.entry(uid.to_owned()).or_insert_with(|| {
                let backoff = Duration::from_secs(10 << p.restarts.min(4));
                tracing_line(key, &format!("exited ({status}); restart in {backoff:?}"));
                Instant::now() + backoff
            });
            if Instant::now() >= at {
                self.restart_at.remove(uid);
                p.restarts += 1;
                p.spawn(&name)?;
            } else {
                let state = Reported::CrashLoop {
                    ip,
                    exit_code: status.code().unwrap_or(-1),
                    restarts: p.restarts,
                };
                self.report(shared, pod, uid, &state)?;
                return Ok(());
            }
        }
        let p = self.running.get_mut(uid).expect("running");
        if !p.ready && p.probe() {
            p.ready = true;
            tracing_line(key, &format!("ready after {:?}", p.started.elapsed()));
        }
        let state = Reported::Running {
            ip,
            ready: p.ready,
            restarts: p.restarts,
        };
        self.report(shared, pod, uid, &state)?;
        Ok(())
    }

    /// Patch the pod's status if it differs from the last report; returns whether it did.
    fn report(
        &mut self,
        shared: &Shared,
        pod: &Value,
        uid: &str,
        state: &Reported<'_>,
    ) -> Result<bool> {
        let fp = fingerprint(state);
        if self.reported.get(uid) == Some(&fp) {
            return Ok(false);
        }
        let ns = str_at(pod, "/metadata/namespace");
        let name = str_at(pod, "/metadata/name");
        patch_status(&shared.kube, &ns, &name, &pod_status(pod, state))?;
        self.reported.insert(uid.to_owned(), fp);
        Ok(true)
    }

    fn stop_pod(&mut self, shared: &Shared, uid: &str, key: &str) {
        shared.clear_error(key);
        self.restart_at.remove(uid);
        if let Some(mut p) = self.running.remove(uid) {
            p.stop(MAX_GRACE);
            self.lingering
                .push((p.sandbox, Instant::now() + SANDBOX_LINGER));
            tracing_line(key, "stopped");
        }
    }

    fn free_slot(&mut self) -> Result<usize> {
        let used: HashSet<usize> = self
            .running
            .values()
            .map(|p| &p.sandbox)
            .chain(self.lingering.iter().map(|(s, _)| s))
            .map(|s| s.slot)
            .collect();
        // Slot 0 is the client pod of the node.
        for _ in 0..MAX_PODS {
            self.next_slot = self.next_slot % (MAX_PODS - 1) + 1;
            if !used.contains(&self.next_slot) {
                return Ok(self.next_slot);
            }
        }
        anyhow::bail!("the node's pod range is full ({} pods)", MAX_PODS - 1)
    }
}

/// What the scheduler does: POST pods/<name>/binding to this node.
fn bind(shared: &Shared, pod: &Value) -> Result<()> {
    let ns = str_at(pod, "/metadata/namespace");
    let name = str_at(pod, "/metadata/name");
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": shared.node_name},
    });
    let path = format!("/api/v1/namespaces/{ns}/pods/{name}/binding");
    let out = shared
        .kube
        .kubectl_stdin(["create", "--raw", &path, "-f", "-"], &binding.to_string())?;
    crate::kube::kubectl::checked(&format!("create --raw {path}"), out).map(drop)
}

/// What the kubelet does once a terminating pod's containers are gone.
fn finish_deletion(shared: &Shared, pod: &Value) -> Result<()> {
    let ns = str_at(pod, "/metadata/namespace");
    let name = str_at(pod, "/metadata/name");
    shared
        .kube
        .kubectl_ok([
            "delete",
            "pod",
            &name,
            "-n",
            &ns,
            "--grace-period=0",
            "--force",
            "--ignore-not-found",
            "--wait=false",
        ])
        .map(drop)
}

fn objects(items: &[Value]) -> Objects {
    let mut o = Objects::default();
    for i in items {
        let id = (
            str_at(i, "/metadata/namespace"),
            str_at(i, "/metadata/name"),
        );
        let mut data = BTreeMap::new();
        let strings = |v: &Value, data: &mut BTreeMap<String, Vec<u8>>, decode: bool| {
            for (k, v) in v.as_object().into_iter().flatten() {
                let s = v.as_str().unwrap_or_default();
                let bytes = if decode {
                    base64::decode(s).unwrap_or_default()
                } else {
                    s.as_bytes().to_vec()
                };
                data.insert(k.clone(), bytes);
            }
        };
        match i["kind"].as_str() {
            Some("ConfigMap") => {
                strings(&i["data"], &mut data, false);
                strings(&i["binaryData"], &mut data, true);
                o.configmaps.insert(id, data);
            }
            Some("Secret") => {
                strings(&i["data"], &mut data, true);
                o.secrets.insert(id, data);
            }
            _ => {}
        }
    }
    o
}

fn str_at(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// One line on the test's stderr per pod lifecycle step (cargo test shows it for failures).
fn tracing_line(key: &str, what: &str) {
    eprintln!("meshpath-tests: local node: pod {key}: {what}");
}
