//! Compiled frontends → the entries of the kernel maps: a header (slot 0) and one slot per
//! backend for each frontend, the backends table, names and connection limits. Rendered per
//! frontend, so that a change rewrites only the frontends it touched (`incremental`).

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use meshpath_common::{
    ipv4_be, port_be, Backend, ServiceKey, ServiceName, ServiceValue, SVC_FLAG_AFFINITY,
    SVC_FLAG_FAIL_CLOSED, SVC_FLAG_ROUND_ROBIN, SVC_FLAG_STEERED,
};
use meshpath_model::LbPolicy;

use super::{
    backend_value, lb, proto_number, steer, weighted, BackendAddr, Compiled, Frontend,
    FrontendAddr, MapContents,
};

/// How one frontend is steered to the node proxy: the listener and its backend id.
struct Steered {
    backend_id: u32,
    backend: Backend,
    fail_closed: bool,
}

impl Compiled {
    /// Renders the result into map entries: slot 0 per frontend, one slot per backend.
    pub fn map_contents(&self) -> MapContents {
        self.map_contents_steered(&BTreeMap::new(), &BTreeMap::new(), &steer::FailClosed::None)
    }

    /// As [`Compiled::map_contents`], but each frontend in `steer` is flagged `SVC_FLAG_STEERED`
    /// with the given address (a node proxy listener) in its header: connect4 sends connections
    /// there while the proxy listens, and balances them over the slots (or refuses them, for
    /// the services `fail_closed` names) while it does not.
    ///
    /// Each frontend in `weighted` (a VirtualService `tcp:` route, an L4 rule) gets its slots
    /// from the weighted clusters instead of its own backends: 100 slots, each cluster's weight
    /// spread over its endpoints, so picking a slot per connection honours the weights.
    pub fn map_contents_steered(
        &self,
        steer: &BTreeMap<FrontendAddr, SocketAddrV4>,
        weighted: &BTreeMap<FrontendAddr, Vec<(Vec<BackendAddr>, u32)>>,
        fail_closed: &steer::FailClosed,
    ) -> MapContents {
        let mut out = MapContents::default();
        let mut proxy_backends: BTreeMap<BackendAddr, u32> = BTreeMap::new();
        // Proxy backends get ids above every real backend id, so they never collide.
        let first_proxy_id = self.backend_ids.values().max().copied().unwrap_or(0) + 1;
        for (addr, fe) in &self.frontends {
            let steered = steer.get(addr).map(|target| {
                let proxy = BackendAddr {
                    ip: *target.ip(),
                    port: target.port(),
                    protocol: addr.protocol,
                };
                let next = first_proxy_id + proxy_backends.len() as u32;
                Steered {
                    backend_id: *proxy_backends.entry(proxy).or_insert(next),
                    backend: backend_value(&proxy),
                    fail_closed: fail_closed.refuses(&fe.service),
                }
            });
            self.render_frontend(addr, fe, steered, weighted.get(addr), &mut out);
        }
        out.backends = self
            .backend_ids
            .iter()
            .map(|(addr, id)| (*id, backend_value(addr)))
            .collect();
        out.backends.extend(
            proxy_backends
                .iter()
                .map(|(addr, id)| (*id, backend_value(addr))),
        );
        out
    }

    /// The entries of the frontends at `addrs` only (those it holds), neither steered nor
    /// weighted, without backends: what [`Compiled::map_contents`] renders for them.
    pub fn frontend_contents<'a>(
        &self,
        addrs: impl IntoIterator<Item = &'a FrontendAddr>,
    ) -> MapContents {
        let mut out = MapContents::default();
        for addr in addrs {
            if let Some(fe) = self.frontends.get(addr) {
                self.render_frontend(addr, fe, None, None, &mut out);
            }
        }
        out
    }

    fn render_frontend(
        &self,
        addr: &FrontendAddr,
        fe: &Frontend,
        steered: Option<Steered>,
        weighted: Option<&Vec<(Vec<BackendAddr>, u32)>>,
        out: &mut MapContents,
    ) {
        out.names
            .insert(fe.svc_id, ServiceName::new(&fe.display_name(addr)));
        if let (Some(max), None) = (fe.max_connections, &steered) {
            out.conn_limits.insert(fe.svc_id, max);
        }
        // A steered frontend keeps its own endpoints in its slots (connect4's fallback while
        // the proxy is down) and names the proxy listener in its header.
        let (proxy_id, proxy, steer_flags) = match steered {
            Some(s) if s.fail_closed => (
                s.backend_id,
                s.backend,
                SVC_FLAG_STEERED | SVC_FLAG_FAIL_CLOSED,
            ),
            Some(s) => (s.backend_id, s.backend, SVC_FLAG_STEERED),
            None => (0, Backend::NONE, 0),
        };
        let base = service_key(addr);
        let mut flags = 0;
        if fe.lb_policy == LbPolicy::RoundRobin {
            flags |= SVC_FLAG_ROUND_ROBIN;
        }
        if fe.affinity_timeout_sec.is_some() {
            flags |= SVC_FLAG_AFFINITY;
        }
        let slots: Vec<Option<&BackendAddr>> = match weighted {
            Some(w) => weighted::slots(w, &self.backend_ids)
                .into_iter()
                .map(|(_, b)| b)
                .collect(),
            None => fe.backends.iter().map(Some).collect(),
        };
        let header = ServiceValue {
            backend_id: proxy_id,
            backend: proxy,
            count: slots.len() as u16,
            flags: flags | steer_flags,
            policy: lb::policy_code(fe),
            svc_id: fe.svc_id,
            affinity_timeout_sec: fe.affinity_timeout_sec.unwrap_or(0),
        };
        out.services.insert(base, header);
        for (i, b) in slots.iter().enumerate() {
            let backend_id = b.map_or(meshpath_common::NO_ENDPOINT_BACKEND_ID, |b| {
                self.backend_ids[b]
            });
            out.services.insert(
                base.with_slot(i as u16 + 1),
                ServiceValue {
                    backend_id,
                    // A destination without endpoints: no address, refused by connect4.
                    backend: b.map_or(Backend::NONE, backend_value),
                    ..header
                },
            );
        }
    }
}

/// The header key (slot 0) of a frontend.
pub fn service_key(addr: &FrontendAddr) -> ServiceKey {
    ServiceKey::new(
        ipv4_be(addr.ip.octets()),
        port_be(addr.port),
        proto_number(addr.protocol),
        0,
    )
}
