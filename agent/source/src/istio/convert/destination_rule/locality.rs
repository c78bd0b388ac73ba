//! `loadBalancer.localityLbSetting` → [`LocalityLbSetting`]. Istio's validation (weights in
//! 1..=100 summing to 100, failover between distinct regions, no `distribute` with
//! `failover`) has already run, so this only carries the values over.

use meshpath_model::istio::model::LocalityLbSetting;
use meshpath_model::l7::{LocalityDistribute, LocalityLb};

use crate::istio::schema;

pub(super) fn setting(lb: Option<&schema::LoadBalancer>) -> Option<LocalityLbSetting> {
    let l = lb?.locality_lb_setting.as_ref()?;
    Some(LocalityLbSetting {
        // Istio's default (meshConfig `localityLbSetting.enabled`) is on.
        enabled: l.enabled.unwrap_or(true),
        settings: LocalityLb {
            distribute: l
                .distribute
                .iter()
                .map(|d| LocalityDistribute {
                    from: d.from.clone(),
                    to: d.to.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                })
                .collect(),
            failover: l
                .failover
                .iter()
                .map(|f| (f.from.clone(), f.to.clone()))
                .collect(),
            failover_priority: l.failover_priority.clone(),
        },
    })
}
