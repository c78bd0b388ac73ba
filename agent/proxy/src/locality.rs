//! Locality-aware picking (`localityLbSetting`), as Istio configures Envoy and Envoy applies
//! it:
//! - `distribute` (when an entry's `from` matches the proxy's locality): endpoints are grouped
//!   by locality, each group weighted by its `to` share (split between the localities one
//!   pattern matches, by endpoint count, rounded up); endpoints no pattern matches get no
//!   traffic. A group is drawn by weight scaled by its availability (healthy share times 1.4,
//!   at most 1), then an endpoint in it by the cluster's policy.
//! - failover (only with `outlierDetection`: without it Envoy never leaves the first level):
//!   endpoints are ranked in priority levels by their locality against the proxy's (same
//!   subzone, same zone, same region, the `failover` region, others) or by `failoverPriority`
//!   labels. A level takes the share of traffic its health allows (healthy share times the
//!   overprovisioning factor 1.4, at most 100 %), the rest spills to the next levels; a level
//!   under `minHealthPercent` healthy while traffic spills uses all its endpoints (Envoy's
//!   panic mode).
//!
//! Built once per snapshot; a pick reads the ejection mask only.

use std::collections::BTreeMap;

use meshpath_model::l7::{Endpoint, LocalityLb};
use meshpath_model::locality::{REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL};
use meshpath_model::Locality;

/// Envoy's default overprovisioning factor, 1.4, in percent.
const OVERPROVISIONING: usize = 140;

#[derive(Debug)]
pub(crate) enum LocalityRt {
    /// Endpoint indices by priority level, best first; no level is empty.
    Levels {
        levels: Vec<Vec<usize>>,
        /// `minHealthPercent`.
        panic_percent: usize,
    },
    /// `distribute`: (endpoint indices, weight) of each locality that gets traffic.
    Weighted { groups: Vec<(Vec<usize>, u32)> },
}

impl LocalityRt {
    /// `None` when locality changes nothing for this cluster (one level, no distribute rule
    /// for this proxy's locality).
    pub(crate) fn new(
        lb: &LocalityLb,
        failover: bool,
        panic_percent: u32,
        local: &Locality,
        endpoints: &[Endpoint],
    ) -> Option<LocalityRt> {
        if !lb.distribute.is_empty() {
            // Istio applies the first entry whose `from` matches, and then no failover.
            let d = lb.distribute.iter().find(|d| matches(local, &d.from))?;
            return Some(LocalityRt::Weighted {
                groups: distribute(&d.to, endpoints),
            });
        }
        if !failover {
            return None;
        }
        let by_label = !lb.failover_priority.is_empty();
        let mut levels: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, ep) in endpoints.iter().enumerate() {
            let level = if by_label {
                let p = label_priority(&lb.failover_priority, local, ep);
                // Istio: explicit `failover` regions refine the label levels, five per level.
                if lb.failover.is_empty() {
                    p
                } else {
                    p * 5 + locality_priority(local, &ep.locality, &lb.failover)
                }
            } else {
                locality_priority(local, &ep.locality, &lb.failover)
            };
            levels.entry(level).or_default().push(i);
        }
        if levels.len() < 2 {
            return None;
        }
        Some(LocalityRt::Levels {
            levels: levels.into_values().collect(),
            panic_percent: panic_percent as usize,
        })
    }

    /// The endpoints this pick may use (by index), given which are ejected; `None` when none.
    pub(crate) fn allowed(&self, ejected: Option<&[bool]>, n: usize) -> Option<Vec<bool>> {
        let healthy = |i: &usize| ejected.is_none_or(|e| !e[*i]);
        let chosen: Vec<usize> = match self {
            LocalityRt::Levels {
                levels,
                panic_percent,
            } => {
                let (level, panic) =
                    level_for(levels, *panic_percent, &healthy, fastrand::usize(..100));
                let eps = &levels[level];
                if panic {
                    eps.clone()
                } else {
                    eps.iter().copied().filter(healthy).collect()
                }
            }
            LocalityRt::Weighted { groups } => {
                let weight = |(eps, w): &(Vec<usize>, u32)| {
                    let h = eps.iter().filter(|i| healthy(i)).count();
                    let available = (OVERPROVISIONING * h) as f64 / (100 * eps.len()) as f64;
                    f64::from(*w) * available.min(1.0)
                };
                let total: f64 = groups.iter().map(weight).sum();
                if total <= 0.0 {
                    // Nothing healthy anywhere: every endpoint, as Envoy's panic mode.
                    groups.iter().flat_map(|(e, _)| e.iter().copied()).collect()
                } else {
                    let mut r = fastrand::f64() * total;
                    let group = groups
                        .iter()
                        .find(|g| {
                            r -= weight(g);
                            r < 0.0
                        })
                        .unwrap_or(&groups[groups.len() - 1]);
                    group.0.iter().copied().filter(healthy).collect()
                }
            }
        };
        if chosen.is_empty() {
            return None;
        }
        let mut mask = vec![false; n];
        chosen.into_iter().for_each(|i| mask[i] = true);
        Some(mask)
    }
}

/// The level a draw `r` in 0..100 lands on, and whether it is in panic. Envoy: each level's
/// health is `min(100, 1.4 × healthy %)`; loads follow health normalised to at most 100 %,
/// best level first.
fn level_for(
    levels: &[Vec<usize>],
    panic_percent: usize,
    healthy: &impl Fn(&usize) -> bool,
    r: usize,
) -> (usize, bool) {
    let counts: Vec<(usize, usize)> = levels
        .iter()
        .map(|l| (l.iter().filter(|i| healthy(i)).count(), l.len()))
        .collect();
    let health: Vec<usize> = counts
        .iter()
        .map(|(h, t)| (OVERPROVISIONING * h / t).min(100))
        .collect();
    let normalized = health.iter().sum::<usize>().min(100);
    if normalized == 0 {
        return (0, true);
    }
    let mut remaining = 100;
    let mut loads: Vec<usize> = health
        .iter()
        .map(|h| {
            let load = (h * 100 / normalized).min(remaining);
            remaining -= load;
            load
        })
        .collect();
    // Rounding leftovers go to the first level with health, as Envoy does.
    if let Some(first) = health.iter().position(|h| *h > 0) {
        loads[first] += remaining;
    }
    let mut acc = 0;
    let level = loads
        .iter()
        .position(|l| {
            acc += l;
            r < acc
        })
        .unwrap_or(0);
    let (h, t) = counts[level];
    let panic = normalized < 100 && h * 100 < t * panic_percent;
    (level, panic)
}

/// Istio's locality priority of an endpoint for a proxy: 0 same subzone, 1 same zone, 2 same
/// region, 3 another region (4 when a `failover` entry from the proxy's region names another
/// one than the endpoint's).
fn locality_priority(local: &Locality, ep: &Locality, failover: &[(String, String)]) -> usize {
    let p = if local.region != ep.region {
        3
    } else if local.zone != ep.zone {
        2
    } else if local.subzone != ep.subzone {
        1
    } else {
        0
    };
    if p == 3 {
        if let Some((_, to)) = failover.iter().find(|(from, _)| *from == local.region) {
            if *to != ep.region {
                return 4;
            }
        }
    }
    p
}

/// `failoverPriority`: the number of labels after the longest prefix of matching ones. A
/// `name=value` entry matches endpoints labelled so; a topology label matches when the
/// endpoint's locality part equals the proxy's. Other labels would compare the client pod's
/// labels, which a node proxy serving many clients does not have per cluster: they are
/// treated as matching.
fn label_priority(labels: &[String], local: &Locality, ep: &Endpoint) -> usize {
    let matched = labels
        .iter()
        .take_while(|label| match label.split_once('=') {
            Some((k, v)) => ep.labels.get(k).is_some_and(|x| x == v),
            None => match label.as_str() {
                REGION_LABEL => local.region == ep.locality.region,
                ZONE_LABEL => local.zone == ep.locality.zone,
                SUBZONE_LABEL => local.subzone == ep.locality.subzone,
                _ => true,
            },
        })
        .count();
    labels.len() - matched
}

/// Whether `locality` is in `pattern` (`region/zone/subzone`, parts may be `*`, trailing
/// parts may be left out), as Istio matches `distribute` entries.
fn matches(locality: &Locality, pattern: &str) -> bool {
    let parts = [&locality.region, &locality.zone, &locality.subzone];
    pattern
        .split('/')
        .zip(parts)
        .all(|(p, l)| p == "*" || p == l)
}

/// The locality groups of a `distribute` entry's `to` (pattern → weight). Patterns are taken
/// in name order, each locality by the first that matches it.
fn distribute(to: &[(String, u32)], endpoints: &[Endpoint]) -> Vec<(Vec<usize>, u32)> {
    let mut by_locality: BTreeMap<&Locality, Vec<usize>> = BTreeMap::new();
    for (i, ep) in endpoints.iter().enumerate() {
        by_locality.entry(&ep.locality).or_default().push(i);
    }
    let mut to: Vec<&(String, u32)> = to.iter().collect();
    to.sort();
    let mut groups = Vec::new();
    for (pattern, weight) in to {
        let matched: Vec<&Locality> = by_locality
            .keys()
            .copied()
            .filter(|l| matches(l, pattern))
            .collect();
        let total: usize = matched.iter().map(|l| by_locality[l].len()).sum();
        for l in matched {
            let eps = by_locality.remove(l).unwrap_or_default();
            let share = (eps.len() as u64 * u64::from(*weight)).div_ceil(total as u64);
            groups.push((eps, share as u32));
        }
    }
    groups.retain(|(_, w)| *w > 0);
    groups
}

#[cfg(test)]
#[path = "locality_tests.rs"]
mod tests;
