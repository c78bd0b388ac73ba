//! `localityLbSetting` as the proxy applies it: which endpoints a request may go to first,
//! by their locality and the proxy node's.

/// Istio's `localityLbSetting`, validated. With `distribute`, endpoints are drawn by locality
/// weight; otherwise, when the cluster has `outlierDetection`, by priority (failover).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalityLb {
    pub distribute: Vec<LocalityDistribute>,
    /// `failover`: (from region, to region).
    pub failover: Vec<(String, String)>,
    /// `failoverPriority`: label names (or `name=value`), most significant first.
    pub failover_priority: Vec<String>,
}

/// One `distribute` entry: for proxies in `from`, the share of each locality pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalityDistribute {
    /// `region/zone/subzone`, each part possibly `*`, trailing parts optional.
    pub from: String,
    /// (pattern, weight 1..=100), summing to 100.
    pub to: Vec<(String, u32)>,
}
