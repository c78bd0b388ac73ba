//! Steering frontends that need L7 decisions to the node proxy: such a frontend's only backend in
//! the kernel maps becomes one of the proxy's listeners, one listener port per steered frontend,
//! so the proxy knows the original ClusterIP:port from the port a connection arrived on. Frontends
//! without L7 rules keep the pure kernel path. `compile` keeps the real backends (the proxy needs
//! them); steering only changes what is written to the maps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::FrontendAddr;
use meshpath_model::ObjectRef;

/// Which steered services refuse connects while the proxy is down instead of falling back to
/// L4 balancing over their endpoints (which bypasses their L7 rules for that time).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FailClosed {
    /// Every steered service falls back to L4 (fail-open).
    #[default]
    None,
    /// Every steered service refuses.
    All,
    /// These services (`namespace/name`) refuse; the others fall back.
    Services(BTreeSet<String>),
}

impl FailClosed {
    /// From `--proxy-fail-closed`: `*` for all, else service names (`namespace/name`).
    pub fn from_names(names: &[String]) -> Self {
        if names.iter().any(|n| n == "*") {
            FailClosed::All
        } else if names.is_empty() {
            FailClosed::None
        } else {
            FailClosed::Services(names.iter().cloned().collect())
        }
    }

    pub fn refuses(&self, service: &ObjectRef) -> bool {
        match self {
            FailClosed::None => false,
            FailClosed::All => true,
            FailClosed::Services(s) => s.contains(&service.to_string()),
        }
    }
}

/// Stable proxy listener ports, one per steered frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyPorts {
    pub by_frontend: BTreeMap<FrontendAddr, u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free proxy listener port in {first}..={last} for {ip}:{port}; that frontend stays on the kernel path")]
pub struct OutOfProxyPorts {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub first: u16,
    pub last: u16,
}

impl ProxyPorts {
    /// Ports for exactly `steered`, keeping the ones `self` already gave out.
    pub fn assign(
        &self,
        steered: &BTreeSet<FrontendAddr>,
        range: (u16, u16),
    ) -> (ProxyPorts, Vec<OutOfProxyPorts>) {
        let mut by_frontend: BTreeMap<FrontendAddr, u16> = self
            .by_frontend
            .iter()
            .filter(|(f, _)| steered.contains(f))
            .map(|(f, p)| (*f, *p))
            .collect();
        let mut used: BTreeSet<u16> = by_frontend.values().copied().collect();
        let mut errors = Vec::new();
        for f in steered {
            if by_frontend.contains_key(f) {
                continue;
            }
            match (range.0..=range.1).find(|p| !used.contains(p)) {
                Some(p) => {
                    used.insert(p);
                    by_frontend.insert(*f, p);
                }
                None => errors.push(OutOfProxyPorts {
                    ip: f.ip,
                    port: f.port,
                    first: range.0,
                    last: range.1,
                }),
            }
        }
        (ProxyPorts { by_frontend }, errors)
    }

    /// The proxy address each steered frontend's connections are rewritten to.
    pub fn targets(&self, proxy_ip: Ipv4Addr) -> BTreeMap<FrontendAddr, SocketAddrV4> {
        self.by_frontend
            .iter()
            .map(|(f, p)| (*f, SocketAddrV4::new(proxy_ip, *p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_model::Protocol;

    fn fe(last: u8) -> FrontendAddr {
        FrontendAddr {
            ip: Ipv4Addr::new(10, 96, 0, last),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn ports_are_stable_and_reused_after_removal() {
        let (a, e) = ProxyPorts::default().assign(&[fe(1), fe(2)].into(), (15100, 15102));
        assert!(e.is_empty());
        assert_eq!(a.by_frontend[&fe(1)], 15100);
        assert_eq!(a.by_frontend[&fe(2)], 15101);
        // fe(1) goes, fe(3) comes: fe(2) keeps its port, fe(3) gets the freed one.
        let (b, _) = a.assign(&[fe(2), fe(3)].into(), (15100, 15102));
        assert_eq!(b.by_frontend[&fe(2)], 15101);
        assert_eq!(b.by_frontend[&fe(3)], 15100);
    }

    #[test]
    fn fail_closed_by_name_or_all() {
        let web = ObjectRef::new("default", "web");
        let api = ObjectRef::new("default", "api");
        let some = FailClosed::from_names(&["default/web".into()]);
        assert!(some.refuses(&web) && !some.refuses(&api));
        assert!(FailClosed::from_names(&["*".into()]).refuses(&api));
        assert!(!FailClosed::from_names(&[]).refuses(&web));
    }

    #[test]
    fn running_out_is_an_error_naming_the_frontend() {
        let (p, e) = ProxyPorts::default().assign(&[fe(1), fe(2)].into(), (15100, 15100));
        assert_eq!(p.by_frontend.len(), 1);
        assert!(e[0].to_string().contains("10.96.0.2:80"), "{}", e[0]);
    }
}
