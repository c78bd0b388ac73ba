//! The operator's check of the per-Service pass (`meshpath recompile`, admin
//! `POST /debug/recompile`): compile everything as at start, diff it against what the kernel
//! maps really hold (read back, not the agent's record of them), write the difference, and say
//! whether there was one. A difference means the incremental state had drifted; the maps hold
//! the full compile's result afterwards either way.

use std::fmt;

use meshpath_datapath::apply::ApplyStats;
use meshpath_datapath::DatapathMaps;
use meshpath_model::ClusterModel;
use tracing::{info, warn};

use super::Reconciler;

/// What a forced full recompile found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecompileReport {
    /// Map entries the full compile had to write or remove (`None`: the write failed).
    pub written: Option<ApplyStats>,
    /// Whether the compiled frontends and backend ids equal the ones kept before.
    pub compiled_same: bool,
    /// Whether the map contents the agent recorded as written equal the full compile's.
    pub recorded_same: bool,
    /// Whether the node proxy's routing table equals the full compile's (`None`: no proxy, and
    /// the per-Service pass keeps no table).
    pub routing_same: Option<bool>,
    /// The pass the agent was continuing from: per-Service or full.
    pub was_scoped: bool,
    pub frontends: usize,
}

impl RecompileReport {
    /// No difference anywhere: the incremental state was what a full compile gives.
    pub fn same(&self) -> bool {
        let written_nothing = self
            .written
            .is_some_and(|s| s.upserts == 0 && s.deletes == 0);
        written_nothing
            && self.compiled_same
            && self.recorded_same
            && self.routing_same != Some(false)
    }
}

impl fmt::Display for RecompileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.same() { "same" } else { "DIFFERENT" };
        writeln!(f, "full recompile: {verdict}")?;
        writeln!(f, "frontends: {}", self.frontends)?;
        writeln!(
            f,
            "continued from: {}",
            if self.was_scoped {
                "per-Service passes"
            } else {
                "a full pass"
            }
        )?;
        match self.written {
            Some(s) => writeln!(
                f,
                "kernel maps differed by: {} upserts, {} deletes, {} members added, {} members removed",
                s.upserts, s.deletes, s.members_added, s.members_removed
            )?,
            None => writeln!(f, "kernel maps: writing failed (see the agent log)")?,
        }
        writeln!(
            f,
            "compiled state (frontends, backend ids): {}",
            if self.compiled_same {
                "same"
            } else {
                "different"
            }
        )?;
        writeln!(
            f,
            "recorded map contents: {}",
            if self.recorded_same {
                "same"
            } else {
                "different"
            }
        )?;
        writeln!(
            f,
            "node proxy's routing table: {}",
            match self.routing_same {
                Some(true) => "same",
                Some(false) => "different",
                None => "no proxy",
            }
        )
    }
}

impl Reconciler {
    /// Forces the full pass over `model`, diffing against the maps as read back.
    pub fn recompile(&mut self, model: &ClusterModel, maps: &mut DatapathMaps) -> RecompileReport {
        let was_scoped = self.scoped.is_some();
        // The full pass compiles from the previous result (ids, last good state), which stays
        // in place; this copy is what it is compared with.
        let compiled = self.compiled.clone();
        let routing = self.l7.config.clone();
        let recorded = self.applied.take();
        let written = self.reconcile_full(model, maps);
        let report = RecompileReport {
            written,
            compiled_same: self.compiled.frontends == compiled.frontends
                && self.compiled.backend_ids == compiled.backend_ids,
            recorded_same: recorded.is_some() && recorded == self.applied,
            routing_same: self.proxy.as_ref().map(|_| routing == self.l7.config),
            was_scoped,
            frontends: self.compiled.frontends.len(),
        };
        if report.same() {
            info!(
                frontends = report.frontends,
                "full recompile: same as the incremental state"
            );
        } else {
            warn!(report = %report, "full recompile: the incremental state differed");
        }
        report
    }
}
