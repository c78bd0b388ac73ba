//! Keeps the tc path's frontends (`MP_TC_SVC`) in step with the model: NodePorts, external and
//! load-balancer IPs over the node's own endpoints (`meshpath_compile::external`).

use meshpath_compile::external::{self, LocalEndpoints};
use meshpath_compile::Compiled;
use meshpath_datapath::DatapathMaps;
use meshpath_model::ClusterModel;
use tracing::{debug, error, warn};

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
                error!(error = %e, source = ?std::error::Error::source(&e), "writing the tc frontends failed")
            }
        }
    }
}
