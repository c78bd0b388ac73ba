//! The DNS proxy's counters, served at the admin `/metrics` with the sync loop's.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Cheap to clone: every field shares its value with its clones.
#[derive(Clone, Debug, Default)]
pub struct DnsMetrics {
    /// Queries answered from the cluster model (Service and ExternalName names).
    pub answered: Counter,
    /// Queries relayed to the pod's resolver.
    pub forwarded: Counter,
    /// Replies sent with NXDOMAIN (relayed, or for an ExternalName whose target does not exist).
    pub nxdomain: Counter,
    /// Queries that got no answer: the resolver did not answer or the reply could not be sent.
    pub errors: Counter,
}

impl DnsMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("meshpath_dns");
        r.register(
            "queries_answered",
            "DNS queries answered by the agent from the cluster model",
            self.answered.clone(),
        );
        r.register(
            "queries_forwarded",
            "DNS queries relayed to the resolver the pod asked",
            self.forwarded.clone(),
        );
        r.register(
            "nxdomain",
            "DNS replies sent with NXDOMAIN",
            self.nxdomain.clone(),
        );
        r.register(
            "errors",
            "DNS queries left unanswered (resolver timeout or error)",
            self.errors.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_in_prometheus_text() {
        let m = DnsMetrics::default();
        m.answered.inc_by(2);
        m.forwarded.inc();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encodes");
        assert!(
            out.contains("meshpath_dns_queries_answered_total 2"),
            "{out}"
        );
        assert!(
            out.contains("meshpath_dns_queries_forwarded_total 1"),
            "{out}"
        );
        assert!(out.contains("meshpath_dns_errors_total 0"), "{out}");
    }
}
