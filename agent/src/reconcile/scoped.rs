//! The per-Service pass: when a snapshot says which Services changed and nothing global is in
//! play, only those Services are compiled and rendered, and only their map entries are diffed
//! and written. VirtualServices and DestinationRules may be present as long as they are
//! unchanged and no VirtualService names a changed Service (`incremental::istio`). With the node
//! proxy on, the changed Services' entries of its routing table are replaced too, as long as the
//! proxy neither starts nor stops taking one of them (`incremental::l7`). Everything else (the
//! first pass, a relist, an Istio object edited, DNS capture) takes the full pass, which also
//! rebuilds the state kept here.

use meshpath_compile::conn_reset::conn_resets_scoped;
use meshpath_compile::incremental::istio::{apply_rules, IstioScope};
use meshpath_compile::incremental::l7::{plan_l7, services_of_pods, PodIps};
use meshpath_compile::incremental::{plan_changed, touched_services, Scoped, State};
use meshpath_datapath::apply::apply;
use meshpath_datapath::DatapathMaps;
use meshpath_model::ClusterModel;
use tracing::{debug, error, info};

use super::Reconciler;

/// What the per-Service pass keeps between passes.
pub(super) struct ScopedState {
    /// The source's snapshot number the maps were last written for.
    pub seq: u64,
    pub ids: State,
    /// The Services the (unchanged) VirtualServices name.
    pub rules: IstioScope,
    /// With the node proxy: the Pods' addresses, for the routing-table entries a Pod change
    /// touches.
    pub pod_ips: PodIps,
}

impl Reconciler {
    /// Why this reconciler's configuration needs the full pass whatever changed,
    /// if it does. The full pass runs the same checks before keeping a [`ScopedState`].
    pub(super) fn needs_full(&self) -> Option<&'static str> {
        if self.dns.is_some() {
            Some("DNS capture reads every Service")
        } else if !self.ejected.is_empty() {
            Some("outlier ejections are in effect")
        } else if self.tc.is_some() {
            Some("the tc path renders every external frontend")
        } else {
            None
        }
    }

    /// Programs the Services `model` says changed, or says why the full pass must run.
    pub(super) fn reconcile_scoped(
        &mut self,
        model: &ClusterModel,
        maps: &mut DatapathMaps,
    ) -> Result<(), &'static str> {
        if let Some(why) = self.needs_full() {
            return Err(why);
        }
        let scoped = self.scoped.as_mut().ok_or("no per-Service state yet")?;
        let changes = model
            .changes
            .as_ref()
            .ok_or("the source does not say what changed")?;
        if changes.seq == scoped.seq {
            // Woken for something else (a recompile, an ejection set that stayed empty): the
            // model is the one the maps were written for.
            return Ok(());
        }
        let set = changes
            .since(scoped.seq)
            .ok_or("more snapshots skipped than change sets kept")?;
        if set.everything {
            return Err(
                "a change not scoped to Services (Namespace, Node, VirtualService, wildcard DestinationRule, relist)",
            );
        }
        let mut changed = touched_services(model, &set);
        if self.proxy.is_some() {
            // The proxy's clusters carry the labels of the Pods behind their endpoints.
            let known = &scoped.pod_ips;
            changed.extend(services_of_pods(
                model,
                &self.compiled,
                &scoped.ids,
                &self.l7.config,
                &set.pods,
                known,
            ));
        }
        if let Err(e) = scoped.rules.check(model, &changed) {
            debug!(reason = %e, "change not compiled per Service");
            return Err("a changed Service is routed by VirtualServices or sees DestinationRules per client");
        }
        let applied = self.applied.as_mut().ok_or("the last write failed")?;
        let started = std::time::Instant::now();
        let plan = match plan_changed(model, &self.opts, &self.compiled, &scoped.ids, &changed) {
            Ok(plan) => plan,
            Err(e) => {
                debug!(reason = %e, "change not compiled per Service");
                return Err("the changed Services need the full compile");
            }
        };
        let l7_patch = match &self.proxy {
            Some(p) => {
                let steered = |a: &_| self.ports.by_frontend.contains_key(a);
                match plan_l7(
                    model,
                    &self.compiled,
                    &plan,
                    &changed,
                    &self.l7,
                    steered,
                    p.http_no_endpoint_503,
                ) {
                    Ok(patch) => Some(patch),
                    Err(e) => {
                        debug!(reason = %e, "change not compiled per Service");
                        return Err("the node proxy starts or stops taking a changed Service");
                    }
                }
            }
            None => None,
        };
        let delta = plan.apply(&mut self.compiled, &mut scoped.ids, &changed);
        apply_rules(model, &mut self.compiled, &delta, self.connection_limits);
        let compiled_at = started.elapsed();
        let contents = Scoped::new(&self.compiled, applied, &delta);
        let rendered_at = started.elapsed();
        match apply(maps, &contents.desired, Some(&contents.previous)) {
            Ok(stats) => {
                contents.patch(applied);
                scoped.seq = changes.seq;
                // The maps send new connects the new way; now the old ones may go.
                if let Some(resetter) = &self.conn_reset {
                    let mut plan = conn_resets_scoped(
                        delta.old.values(),
                        &self.compiled.backend_ids,
                        model,
                        &self.reset_pending,
                    );
                    self.reset_pending = std::mem::take(&mut plan.pending);
                    resetter.reset(plan);
                }
                let applied_at = started.elapsed();
                // Not steered, so the maps need not wait for the proxy's table: it follows, off
                // this path (`publisher`).
                if let (Some(patch), Some(p)) = (l7_patch, self.proxy.as_mut()) {
                    if !set.pods.is_empty() {
                        p.listeners.update_pods(model);
                        scoped.pod_ips.update(model, &set.pods);
                    }
                    if patch.changes(&self.l7.config, &changed) {
                        if let Some(publisher) = &self.publisher {
                            publisher.patch(patch.clone(), changed.clone());
                        }
                        patch.apply(&mut self.l7.config, &changed);
                    }
                }
                debug!(
                    services = changed.len(),
                    compile_us = compiled_at.as_micros() as u64,
                    rendered_us = rendered_at.as_micros() as u64,
                    applied_us = applied_at.as_micros() as u64,
                    l7_us = started.elapsed().as_micros() as u64,
                    "reconcile timing"
                );
                info!(
                    services_changed = changed.len(),
                    frontends = self.compiled.frontends.len(),
                    backends = applied.backends.len(),
                    upserts = stats.upserts,
                    deletes = stats.deletes,
                    members_added = stats.members_added,
                    members_removed = stats.members_removed,
                    "programmed"
                );
            }
            // The compiled state is ahead of the maps now: the next pass compiles everything
            // and diffs against what the maps really hold.
            Err(e) => {
                self.applied = None;
                self.scoped = None;
                error!(error = %e, source = ?std::error::Error::source(&e), "applying to the maps failed");
            }
        }
        Ok(())
    }
}
