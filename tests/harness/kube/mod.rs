//! A real Kubernetes control plane on loopback for tests: etcd, kube-apiserver and
//! kube-controller-manager built by `scripts/kube-bins.sh`, with per-run credentials, ports chosen
//! at start-up and everything under one per-run directory `<temp>/mpt-<id>-kube`.
//!
//! There is no scheduler and no kubelet: [`KubeCluster::kubelet`] lets a test play the kubelet of
//! a node (bind pods, report them running with chosen IPs, finish their deletion), so the real
//! controllers (Deployment, ReplicaSet, EndpointSlice, garbage collector) do the rest.
//!
//! Dropping a [`KubeCluster`] (also while a failing test unwinds) stops the apiserver first, then
//! the controller-manager, then etcd (an apiserver whose etcd is gone hangs in shutdown), each by
//! the pid we started, and removes the run directory. Processes of runs that died without
//! unwinding are killed by the next `KubeCluster::start`.

mod components;
mod kubectl;
mod kubelet;
pub mod localnode;
mod pki;
mod process;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use kubelet::{FakeKubelet, RunningPod};
pub use localnode::LocalNode;
use pki::Pki;
pub(crate) use process::free_port;
use process::{Proc, RUN_DIR_SUFFIX};

use crate::runid::RunId;

/// The Kubernetes release `scripts/kube-bins.sh` builds (keep the two in step).
pub const KUBE_VERSION: &str = "v1.36.3";

/// Directory holding `etcd`, `kube-apiserver`, `kube-controller-manager` and `kubectl`:
/// `$MESHPATH_KUBE_BIN_DIR`, else `<workspace>/target/kube/<KUBE_VERSION>`.
pub fn kube_bin_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("MESHPATH_KUBE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ is inside the workspace")
            .join("target/kube")
            .join(KUBE_VERSION),
    };
    for bin in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
    ] {
        if !dir.join(bin).is_file() {
            bail!(
                "{} is missing: run `bash scripts/kube-bins.sh` (it builds the Kubernetes \
                 binaries into target/kube/, or into $MESHPATH_KUBE_BIN_DIR when set)",
                dir.join(bin).display()
            );
        }
    }
    Ok(dir)
}

/// What a test may choose about its cluster.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// `--service-cluster-ip-range`: ClusterIPs of Services are allocated from it.
    pub service_cidr: String,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            service_cidr: "10.96.0.0/16".to_owned(),
        }
    }
}

#[derive(Default)]
struct Procs {
    etcd: Option<Proc>,
    apiserver: Option<Proc>,
    kcm: Option<Proc>,
}

/// One running control plane. See the module docs.
pub struct KubeCluster {
    id: RunId,
    dir: PathBuf,
    bins: PathBuf,
    pki: Option<Pki>,
    opts: KubeOptions,
    etcd_url: String,
    apiserver_port: u16,
    kubeconfig: PathBuf,
    procs: Mutex<Procs>,
    startup: Duration,
}

impl KubeCluster {
    /// Start a cluster with default options.
    pub fn start() -> Result<KubeCluster> {
        KubeCluster::start_with(KubeOptions::default())
    }

    /// Start etcd, kube-apiserver and kube-controller-manager and wait until the apiserver is
    /// ready and the controllers run (the `default` ServiceAccount exists, without which no pod
    /// can be created).
    pub fn start_with(opts: KubeOptions) -> Result<KubeCluster> {
        let t0 = Instant::now();
        let bins = kube_bin_dir()?;
        let temp_root = std::env::temp_dir();
        process::cleanup_stale(&temp_root);
        let mut claimed = None;
        for _ in 0..16 {
            let id = RunId::new();
            let dir = temp_root.join(format!("{}{RUN_DIR_SUFFIX}", id.base()));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    claimed = Some((id, dir));
                    break;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
        let Some((id, dir)) = claimed else {
            bail!("no unused run directory under {}", temp_root.display());
        };
        // From here on an early return drops `kube`, which stops what was started so far.
        let mut kube = KubeCluster {
            kubeconfig: dir.join("kubeconfig"),
            id,
            dir,
            bins,
            pki: None,
            opts,
            etcd_url: String::new(),
            apiserver_port: 0,
            procs: Mutex::default(),
            startup: Duration::ZERO,
        };
        let base = kube.id.base();
        kube.boot()
            .with_context(|| format!("starting test cluster {base}"))?;
        kube.startup = t0.elapsed();
        Ok(kube)
    }

    fn boot(&mut self) -> Result<()> {
        let pki_dir = self.dir.join("pki");
        std::fs::create_dir(&pki_dir)?;
        self.pki = Some(pki::generate(&pki_dir)?);

        // Ports are picked free and bound a moment later by the server; if another process took
        // one in between, the server exits with EADDRINUSE and we try fresh ports.
        for attempt in 1..=3 {
            let (client, peer) = (free_port()?, free_port()?);
            self.etcd_url = format!("http://127.0.0.1:{client}");
            match self.spawn_etcd(peer) {
                Ok(p) => {
                    self.procs().etcd = Some(p);
                    break;
                }
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    let _ = std::fs::remove_dir_all(self.dir.join("etcd"));
                }
                Err(e) => return Err(e),
            }
        }
        for attempt in 1..=3 {
            self.apiserver_port = free_port()?;
            match self.spawn_apiserver() {
                Ok(p) => {
                    self.procs().apiserver = Some(p);
                    break;
                }
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {}
                Err(e) => return Err(e),
            }
        }
        let kubeconfig = pki::kubeconfig(&self.server_url(), self.ca_cert_path(), self.token());
        std::fs::write(&self.kubeconfig, kubeconfig)?;
        let kcm = self.spawn_controller_manager()?;
        self.procs().kcm = Some(kcm);
        // The serviceaccount controller creates it: the sign that the controllers run.
        let t0 = Instant::now();
        loop {
            if let Some(kcm) = self.procs().kcm.as_mut() {
                if let Some(status) = kcm.exited() {
                    bail!(
                        "kube-controller-manager exited ({status}):\n{}",
                        kcm.log_tail(30)
                    );
                }
            }
            match self.kubectl_ok(["get", "serviceaccount", "default", "-n", "default"]) {
                Ok(_) => return Ok(()),
                Err(e) if t0.elapsed() > Duration::from_secs(60) => {
                    return Err(e.context(format!(
                        "the controllers did not create the default ServiceAccount within 60 s; \
                         kube-controller-manager log:\n{}",
                        process::log_tail(&self.dir.join("controller-manager.log"), 30)
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn pki(&self) -> &Pki {
        self.pki
            .as_ref()
            .expect("PKI is generated before any process starts")
    }

    fn procs(&self) -> MutexGuard<'_, Procs> {
        // A panic while holding the lock must not stop cleanup.
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This cluster's run id (its directory is `<temp>/mpt-<id>-kube`).
    pub fn id(&self) -> &RunId {
        &self.id
    }

    /// The per-run directory: PKI, etcd data, kubeconfig, `*.log` of every process.
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    /// How long [`KubeCluster::start`] took until the controllers were running.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Path of a kubeconfig (admin token, CA) for this cluster; works with kubectl and kube-rs.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`; the port stays the same across apiserver restarts.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// Bearer token of a `system:masters` user.
    pub fn token(&self) -> &str {
        &self.pki().token
    }

    /// The CA that signed the apiserver's serving certificate.
    pub fn ca_cert_path(&self) -> &Path {
        &self.pki().ca_crt
    }

    /// (component, pid) of every control-plane process currently running.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        let procs = self.procs();
        [&procs.etcd, &procs.apiserver, &procs.kcm]
            .into_iter()
            .flatten()
            .map(|p| (p.label, p.pid()))
            .collect()
    }

    /// The etcd client URL (`http://127.0.0.1:<port>`).
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// SIGTERM the apiserver and wait until it has exited; returns how long that took.
    pub fn stop_apiserver(&self) -> Result<Duration> {
        let p = self
            .procs()
            .apiserver
            .take()
            .context("kube-apiserver is not running")?;
        let (took, killed) = p.stop(Duration::from_secs(30));
        if killed {
            bail!("kube-apiserver ignored SIGTERM for {took:?} and was killed");
        }
        Ok(took)
    }

    /// Start the apiserver again on the same port, with the same etcd data, and wait until it is
    /// ready; returns how long that took.
    pub fn start_apiserver(&self) -> Result<Duration> {
        let t0 = Instant::now();
        if self.procs().apiserver.is_some() {
            bail!("kube-apiserver is already running");
        }
        let p = self.spawn_apiserver()?;
        self.procs().apiserver = Some(p);
        Ok(t0.elapsed())
    }

    /// [`KubeCluster::stop_apiserver`], then [`KubeCluster::start_apiserver`].
    pub fn restart_apiserver(&self) -> Result<Duration> {
        let t0 = Instant::now();
        self.stop_apiserver()?;
        self.start_apiserver()?;
        Ok(t0.elapsed())
    }

    /// Play the kubelet of node `node` (the Node object is created if missing).
    pub fn kubelet(&self, node: &str) -> Result<FakeKubelet<'_>> {
        FakeKubelet::register(self, node)
    }

    /// Print the tail of every component's log to stderr.
    pub fn dump_logs(&self) {
        for name in ["etcd.log", "apiserver.log", "controller-manager.log"] {
            let path = self.dir.join(name);
            eprintln!("--- {} {} ---", self.id.base(), path.display());
            eprintln!("{}", process::log_tail(&path, 40));
        }
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let base = self.id.base();
        let mut procs = self.procs();
        // Apiserver first: with etcd gone its shutdown hangs retrying etcd.
        for p in [procs.apiserver.take(), procs.kcm.take(), procs.etcd.take()]
            .into_iter()
            .flatten()
        {
            let label = p.label;
            let (took, killed) = p.stop(Duration::from_secs(15));
            if killed {
                eprintln!("meshpath-tests: {base}: {label} needed SIGKILL after {took:?}");
            }
        }
        drop(procs);
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => eprintln!("meshpath-tests: removing {}: {e}", self.dir.display()),
        }
    }
}
