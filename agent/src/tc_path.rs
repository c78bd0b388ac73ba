//! Keeps the tc path's frontends (`MP_TC_SVC`) in step with the model: NodePorts, external and
//! load-balancer IPs over the node's own endpoints (`meshpath_compile::external`).

use meshpath_compile::external::{self, LocalEndpoints};
use meshpath_compile::Compiled;
use meshpath_datapath::DatapathMaps;
use meshpath_model::ClusterModel;
use tracing::{debug, error, info, warn};

/// What the tc path needs from the agent's configuration.
#[derive(Clone, Debug, Default)]
pub struct TcPath {
    /// `--node-name`: which pods are this node's. `None`: every endpoint counts as local (a
    /// single-node set-up, such as a manifests directory).
    pub node_name: Option<String>,
}

impl TcPath {
    /// Renders and writes the external frontends of `compiled` (the result just applied).
    pub fn sync(&self, model: &ClusterModel, compiled: &Compiled, maps: &mut DatapathMaps) {
        let Some(tc) = maps.tc.as_mut() else {
            warn!("the eBPF object has no tc maps: NodePorts and external IPs not programmed");
            return;
        };
        let local = match &self.node_name {
            Some(node) => LocalEndpoints::of_node(model, node),
            None => LocalEndpoints::All,
        };
        let (contents, errors) = external::render(model, compiled, &local);
        for e in &errors {
            error!(error = %e, "external frontend not programmed");
        }
        match tc.apply(&contents) {
            Ok(changes) => debug!(
                entries = contents.services.len(),
                changes, "tc frontends programmed"
            ),
            Err(e) => {
                error!(error = %e, source = ?std::error::Error::source(&e), "writing the tc frontends failed");
                return;
            }
        }
        match tc.forget_departed(&contents) {
            Ok(s) if s.backend_gone + s.closed + s.idle > 0 => info!(
                backend_gone = s.backend_gone,
                closed = s.closed,
                idle = s.idle,
                kept = s.kept,
                "tc conntrack swept"
            ),
            Ok(_) => {}
            Err(e) => {
                error!(error = %e, source = ?std::error::Error::source(&e), "sweeping the tc conntrack failed")
            }
        }
    }
}

/// How often the closed and idle flows of the tc conntrack are swept between changes.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Sweeps the pinned conntrack of `pin_dir` every [`SWEEP_EVERY`] (closed and idle flows; the
/// reconciler's sync forgets departed backends' flows), then gives back the connection slots of
/// counted flows whose entries are gone, whoever removed them (this sweep, the reconciler's, or
/// the LRU). Runs until the agent exits.
pub fn spawn_sweeper(
    pin_dir: std::path::PathBuf,
    releaser: Option<meshpath_datapath::tc_limit::Releaser>,
) {
    use meshpath_datapath::{tc_ct, tc_limit};
    tokio::spawn(async move {
        let mut ct = match tc_ct::open_pinned(&pin_dir) {
            Ok(ct) => ct,
            Err(e) => {
                warn!(error = %e, source = ?std::error::Error::source(&e), "tc conntrack not swept: closed flows wait for the LRU");
                return;
            }
        };
        let counted = match tc_limit::open_pinned(&pin_dir) {
            Ok(counted) => counted,
            Err(e) => {
                warn!(error = %e, source = ?std::error::Error::source(&e), "tc counted flows not swept: evicted flows keep their connection slots");
                None
            }
        };
        let limits = counted.zip(releaser);
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            match tc_ct::sweep(&mut ct, tc_ct::monotonic_ns(), &Default::default(), None) {
                Ok(s) if s.closed + s.idle > 0 => {
                    debug!(
                        closed = s.closed,
                        idle = s.idle,
                        kept = s.kept,
                        "tc conntrack swept"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, source = ?std::error::Error::source(&e), "sweeping the tc conntrack failed")
                }
            }
            let Some((counted, releaser)) = limits.as_ref() else {
                continue;
            };
            match tc_limit::release_vanished(counted, &ct, releaser) {
                Ok(0) => {}
                Ok(released) => info!(released, "connection slots of vanished tc flows given back"),
                Err(e) => {
                    warn!(error = %e, source = ?std::error::Error::source(&e), "releasing vanished tc flows failed")
                }
            }
        }
    });
}
