//! The seed's walk-through (the proof of concept in examples/seed/) on a [`LocalNode`]: the four
//! apps run as Deployments of a real control plane, meshpath runs with `--source kube` and its
//! node proxy, and every scenario of the seed is one function here that applies the seed's YAML,
//! sends real traffic from the client pod and returns a [`Verdict`] with the measured figures.
//!
//! `cargo xtask demo` prints these verdicts; `tests/seed_system.rs` asserts them, one test per
//! scenario. Both therefore measure the same thing the same way.
//!
//! meshpath steers a Service to its L7 proxy only when it has an L7 rule; Istio's sidecars see
//! every request of every Service. So the walk-through starts by giving each app Service a plain
//! route (`examples/seed/artifacts/mesh/routes.yaml`), and a scenario that replaces one of those
//! VirtualServices puts the plain one back when it is done (never deleting it: a connection made
//! while a Service has no rule stays on the kernel path).

mod binomial;
mod bodies;
mod client;
mod config;
mod faults;
mod routing;
mod scenarios;
mod trace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::agent::Agent;
use crate::LocalNode;

pub use binomial::{bounds, Bounds};
pub use scenarios::{scenario, Check, Scenario, Verdict, SCENARIOS};
pub use trace::{jaeger_bin, Jaeger};

/// How long a Spring Boot pod may take to become ready on two shared cores.
pub const APP_READY: Duration = Duration::from_secs(180);

/// What a walk-through run may choose.
pub struct Options {
    /// Shorten the seed's 7 s delay to 1 s (by rewriting `fixedDelay` in the YAML).
    pub quick: bool,
    /// A Jaeger binary (`scripts/jaeger.sh`): the trace is then read back from Jaeger's API.
    pub jaeger: Option<PathBuf>,
    /// Where progress and real output go, line by line (stdout for the demo, stderr in tests).
    pub say: Box<dyn Fn(&str) + Send + Sync>,
}

/// The workspace (examples/seed/ is read from it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The four app Deployments and how many pods each has when the walk-through starts.
const APPS: [(&str, &str); 5] = [
    ("golang-app-data", "app=golang-app-data"),
    ("python-app-anticaptcha", "app=python-app-anticaptcha"),
    ("springboot-app v1", "app=springboot-app,version=v1"),
    ("springboot-app v2", "app=springboot-app,version=v2"),
    ("golang-app-gateway", "app=golang-app-gateway"),
];

/// A running walk-through: the node with the seed's apps, meshpath, and optionally Jaeger.
/// Fields drop in order: the agent stops before Jaeger and the node go.
pub struct Walkthrough {
    agent: Agent,
    jaeger: Option<Jaeger>,
    node: LocalNode,
    opts: Options,
    work: PathBuf,
    vips: BTreeMap<String, String>,
}

impl Walkthrough {
    /// The control plane and pod runner, Jaeger when given, meshpath, `kubectl apply -f
    /// examples/seed/artifacts/apps` and the plain routes; returns once every app pod is ready.
    pub fn start(opts: Options) -> Result<Walkthrough> {
        let say = |s: &str| (opts.say)(s);
        let t0 = Instant::now();
        say("[start] Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) and the pod runner");
        let node = LocalNode::start().context("starting the local node")?;
        // Istio's kinds, as `istioctl install` registers them (meshpath's deploy/ carries them),
        // before the agent starts watching them.
        say("$ kubectl apply -f deploy/10-crds-istio.yaml");
        let crds = workspace().join("deploy/10-crds-istio.yaml");
        node.kubectl(&["apply", "-f", &crds.display().to_string()])?;
        node.kubectl(&[
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            "crd/virtualservices.networking.istio.io",
            "crd/destinationrules.networking.istio.io",
        ])?;
        let work = node.kube().run_dir().join("walkthrough");
        std::fs::create_dir_all(&work)?;
        let jaeger = match &opts.jaeger {
            Some(bin) => {
                say(&format!("[start] Jaeger ({})", bin.display()));
                Some(Jaeger::start(bin, &work)?)
            }
            None => None,
        };
        let mut extra = vec!["--trace-sampling".to_string(), "1".to_string()];
        if let Some(j) = &jaeger {
            extra.extend(["--trace-collector".into(), j.collector_url()]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        say(&format!(
            "[start] meshpath agent --source kube (node proxy on, DNS on) {}",
            extra.join(" ")
        ));
        let agent = node.start_agent(&extra).context("starting meshpath")?;
        let mut w = Walkthrough {
            agent,
            jaeger,
            node,
            opts,
            work,
            vips: BTreeMap::new(),
        };
        w.apply_file("examples/seed/artifacts/apps")?;
        w.apply_file("examples/seed/artifacts/mesh/routes.yaml")?;
        w.say(&format!(
            "[start] waiting for the pods (Spring Boot may take {} s on two busy cores)",
            APP_READY.as_secs()
        ));
        for (app, selector) in APPS {
            let pods = w.node.wait_ready("default", selector, 1, APP_READY)?;
            let names: Vec<String> = pods
                .iter()
                .map(|p| format!("{} {}", p.name, p.ip))
                .collect();
            w.say(&format!("  ready: {app}: {}", names.join(", ")));
        }
        let svcs = w.node.kube().get_json(&["services", "-A"])?;
        for s in svcs["items"].as_array().into_iter().flatten() {
            let name = s["metadata"]["name"].as_str().unwrap_or_default();
            if let Some(ip) = s["spec"]["clusterIP"].as_str() {
                w.vips.insert(name.to_string(), ip.to_string());
            }
        }
        for svc in ROUTED {
            w.wait_steered(svc)?;
        }
        w.say(&format!(
            "[start] ready after {:.0?}: every app Service steered to the node proxy",
            t0.elapsed()
        ));
        Ok(w)
    }

    /// Runs `s`: a harness error becomes a failed check, so a run always yields a verdict.
    pub fn run(&self, s: &Scenario) -> Verdict {
        self.say(&format!("\n=== {}: {}", s.name, s.title));
        let mut v = Verdict::new(s.name);
        let t0 = Instant::now();
        if let Err(e) = (s.run)(self, &mut v) {
            v.check(false, format!("{e:#}"));
        }
        if let Err(e) = self.restore() {
            v.check(false, format!("restoring the plain routes: {e:#}"));
        }
        v.figure = format!("{} ({:.1} s)", v.figure, t0.elapsed().as_secs_f64());
        self.say(&v.line());
        v
    }

    pub(crate) fn say(&self, line: &str) {
        (self.opts.say)(line)
    }

    pub(crate) fn quick(&self) -> bool {
        self.opts.quick
    }

    /// Scratch files of the walk-through (edited YAML, the captcha image, Jaeger's log).
    pub(crate) fn work_dir(&self) -> &Path {
        &self.work
    }

    pub fn node(&self) -> &LocalNode {
        &self.node
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    pub(crate) fn jaeger(&self) -> Option<&Jaeger> {
        self.jaeger.as_ref()
    }

    /// The ClusterIP of Service `name` (any namespace; the apps' names are unique).
    pub(crate) fn vip(&self, name: &str) -> Result<&str> {
        self.vips
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("Service {name} has no ClusterIP"))
    }

    /// `kubectl ARGS`, echoed with its output.
    pub(crate) fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.say(&format!("$ kubectl {}", args.join(" ")));
        let out = self.node.kubectl(args)?;
        for line in out.lines() {
            self.say(&format!("  {line}"));
        }
        Ok(out)
    }

    /// `kubectl apply -f <path under the workspace>`, echoed.
    pub(crate) fn apply_file(&self, rel: &str) -> Result<String> {
        let path = workspace().join(rel);
        self.say(&format!("$ kubectl apply -f {rel}"));
        let out = self
            .node
            .kubectl(&["apply", "-f", &path.display().to_string()])?;
        for line in out.lines() {
            self.say(&format!("  {line}"));
        }
        Ok(out)
    }

    /// The seed's file `rel` with `edits` (from, to) made as plain text, applied from the work
    /// directory under `name`; each edit must change the text.
    pub(crate) fn apply_edited(&self, rel: &str, name: &str, edits: &[(&str, &str)]) -> Result<()> {
        let mut text = std::fs::read_to_string(workspace().join(rel))
            .with_context(|| format!("reading {rel}"))?;
        for (from, to) in edits {
            if !text.contains(from) {
                bail!("{rel} does not contain {from:?}");
            }
            text = text.replace(from, to);
            self.say(&format!("  ({rel}: {from:?} -> {to:?})"));
        }
        let path = self.work.join(name);
        std::fs::write(&path, text)?;
        self.say(&format!("$ kubectl apply -f {rel}   # edited copy"));
        let out = self
            .node
            .kubectl(&["apply", "-f", &path.display().to_string()])?;
        for line in out.lines() {
            self.say(&format!("  {line}"));
        }
        Ok(())
    }

    /// Waits until the kernel steers Service `svc` (default namespace) to the node proxy.
    pub(crate) fn wait_steered(&self, svc: &str) -> Result<()> {
        let name = format!("default/{svc}:");
        let ok = crate::wait_until(Duration::from_secs(20), || {
            self.agent
                .status()
                .is_ok_and(|s| crate::agent::steered_to_proxy(&s, &name))
        });
        if !ok {
            bail!("{svc} was not steered to the node proxy within 20 s");
        }
        Ok(())
    }

    /// How many reconciles the agent has logged (`programmed`): taken before an edit, for
    /// [`Walkthrough::wait_programmed`].
    pub(crate) fn mark(&self) -> usize {
        self.agent.log().matches(" programmed").count()
    }

    /// Waits until the agent has programmed a cluster state newer than `mark` (the edit made
    /// after taking it): maps and the proxy's routing table are swapped together.
    pub(crate) fn wait_programmed(&self, mark: usize) -> Result<()> {
        if !crate::wait_until(Duration::from_secs(10), || self.mark() > mark) {
            bail!("the agent programmed nothing new within 10 s of the edit");
        }
        self.say("  (meshpath has programmed it: kernel maps and proxy routes)");
        // An edit of two objects may arrive in two reconciles: the last one counts.
        self.quiet();
        Ok(())
    }

    /// Waits until the agent has programmed nothing new for 500 ms (at most 5 s).
    fn quiet(&self) {
        crate::wait::settle(Duration::from_secs(5), Duration::from_millis(500), || {
            self.mark()
        });
    }

    /// After every scenario: the plain routes back, the scenario DestinationRules gone, every
    /// Deployment at one replica and ready.
    fn restore(&self) -> Result<()> {
        let routes = workspace().join("examples/seed/artifacts/mesh/routes.yaml");
        self.node
            .kubectl(&["apply", "-f", &routes.display().to_string()])?;
        self.node
            .kubectl(&["delete", "destinationrule", "--all", "-n", "default"])?;
        for (app, selector) in APPS {
            let deploy = match app {
                "springboot-app v1" => "springboot-app-v1".to_string(),
                "springboot-app v2" => "springboot-app-v2".to_string(),
                other => format!("{other}-v1"),
            };
            let replicas = self.node.kube().get_json(&["deployment", &deploy])?["spec"]["replicas"]
                .as_u64()
                .unwrap_or(1);
            if replicas != 1 {
                self.node
                    .kubectl(&["scale", "--replicas=1", "deployment", &deploy])?;
                self.node.wait_ready("default", selector, 1, APP_READY)?;
            }
        }
        self.quiet();
        Ok(())
    }
}

/// The Services the plain routes steer to the node proxy.
pub(crate) const ROUTED: [&str; 4] = [
    "golang-app-gateway-svc",
    "springboot-app-svc",
    "golang-app-data-svc",
    "python-app-anticaptcha-svc",
];
