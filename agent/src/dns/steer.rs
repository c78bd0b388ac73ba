//! DNS steering in the kernel maps: each captured resolver becomes a frontend (`ip:53`, UDP and
//! TCP) whose one backend is the agent's listener for it, flagged `SVC_FLAG_DNS`. The existing
//! connect4/sendmsg4 translation then rewrites a pod's query to the listener, and recvmsg4 /
//! getpeername4 show the resolver's address again on the way back. A resolver that is also a
//! Service frontend (kube-dns's ClusterIP) is taken over, keeping its service id.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;

use meshpath_common::{
    ipv4_be, port_be, Backend, ServiceKey, ServiceName, ServiceValue, PROTO_TCP, PROTO_UDP,
    SVC_FLAG_DNS,
};

use meshpath_compile::MapContents;

/// How steered resolvers are named in `meshpath status`.
pub const STATUS_NAME: &str = "meshpath/dns-proxy";

/// resolver (`ip:53`) → the agent listener its queries go to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsSteering {
    pub by_resolver: BTreeMap<SocketAddrV4, SocketAddrV4>,
}

/// Adds the steering entries to `contents` (after the Services were rendered into it).
pub fn render(contents: &mut MapContents, steering: &DnsSteering, max_frontends: u32) {
    let mut used_ids: BTreeSet<u32> = contents.services.values().map(|v| v.svc_id).collect();
    used_ids.extend(contents.names.keys().copied());
    let mut next_backend = contents.backends.keys().max().copied().unwrap_or(0) + 1;
    // Fresh ids from the top of the id space down: compile allocates from the bottom up.
    let mut free_ids = (1..max_frontends).rev().filter(|id| !used_ids.contains(id));
    for (resolver, listener) in &steering.by_resolver {
        for proto in [PROTO_UDP, PROTO_TCP] {
            let base = ServiceKey::new(
                ipv4_be(resolver.ip().octets()),
                port_be(resolver.port()),
                proto,
                0,
            );
            let taken_over = contents.services.get(&base).map(|v| v.svc_id);
            if let Some(id) = taken_over {
                contents.services.retain(|k, _| k.with_slot(0) != base);
                contents.slot_limits.retain(|k, _| k.with_slot(0) != base);
                contents.conn_limits.remove(&id);
            }
            let Some(svc_id) = taken_over.or_else(|| free_ids.next()) else {
                // Every id in use: this resolver stays as it is (its queries go out directly).
                continue;
            };
            // `meshpath status` prints the frontend (resolver) and protocol next to the name.
            contents.names.insert(svc_id, ServiceName::new(STATUS_NAME));
            let header = ServiceValue {
                backend_id: 0,
                count: 1,
                flags: SVC_FLAG_DNS,
                policy: 0,
                svc_id,
                affinity_timeout_sec: 0,
                backend: Backend::NONE,
            };
            // Backend ids above every Service backend id, as the proxy's listeners get.
            let backend_id = next_backend;
            next_backend += 1;
            let backend = Backend {
                ip_be: ipv4_be(listener.ip().octets()),
                port_be: port_be(listener.port()),
                proto,
                _pad0: 0,
            };
            contents.services.insert(base, header);
            contents.services.insert(
                base.with_slot(1),
                ServiceValue {
                    backend_id,
                    backend,
                    ..header
                },
            );
            contents.backends.insert(backend_id, backend);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steering() -> DnsSteering {
        DnsSteering {
            by_resolver: [(
                "10.96.0.10:53".parse().expect("addr"),
                "10.244.0.1:15053".parse().expect("addr"),
            )]
            .into(),
        }
    }

    fn key(proto: u8, slot: u16) -> ServiceKey {
        ServiceKey::new(ipv4_be([10, 96, 0, 10]), port_be(53), proto, slot)
    }

    #[test]
    fn a_resolver_becomes_a_flagged_frontend_per_protocol_pointing_at_the_listener() {
        let mut c = MapContents::default();
        c.backends.insert(
            7,
            Backend {
                ip_be: 1,
                port_be: 2,
                proto: PROTO_TCP,
                _pad0: 0,
            },
        );
        render(&mut c, &steering(), meshpath_common::MAX_SERVICE_IDS);
        for proto in [PROTO_UDP, PROTO_TCP] {
            let header = c.services[&key(proto, 0)];
            assert_eq!(header.count, 1);
            assert_eq!(header.flags, SVC_FLAG_DNS);
            let slot = c.services[&key(proto, 1)];
            let backend = c.backends[&slot.backend_id];
            assert!(slot.backend_id > 7, "above every Service backend id");
            assert_eq!(backend.ip_be, ipv4_be([10, 244, 0, 1]));
            assert_eq!(backend.port_be, port_be(15053));
            assert_eq!(backend.proto, proto);
            assert_eq!(c.names[&header.svc_id].as_str(), STATUS_NAME);
        }
        assert_ne!(
            c.services[&key(PROTO_UDP, 0)].svc_id,
            c.services[&key(PROTO_TCP, 0)].svc_id
        );
    }

    #[test]
    fn kube_dns_service_frontend_is_taken_over_with_its_id() {
        let mut c = MapContents::default();
        let header = ServiceValue {
            backend_id: 0,
            count: 2,
            flags: 0,
            policy: 0,
            svc_id: 5,
            affinity_timeout_sec: 0,
            backend: Backend::NONE,
        };
        c.services.insert(key(PROTO_UDP, 0), header);
        for slot in 1..=2 {
            c.services.insert(
                key(PROTO_UDP, slot),
                ServiceValue {
                    backend_id: u32::from(slot),
                    ..header
                },
            );
        }
        c.conn_limits.insert(5, 10);
        render(&mut c, &steering(), meshpath_common::MAX_SERVICE_IDS);
        assert_eq!(c.services[&key(PROTO_UDP, 0)].svc_id, 5);
        assert_eq!(c.services[&key(PROTO_UDP, 0)].count, 1);
        assert!(
            !c.services.contains_key(&key(PROTO_UDP, 2)),
            "old slots gone"
        );
        assert!(!c.conn_limits.contains_key(&5));
    }

    #[test]
    fn nothing_to_steer_changes_nothing() {
        let mut c = MapContents::default();
        render(
            &mut c,
            &DnsSteering::default(),
            meshpath_common::MAX_SERVICE_IDS,
        );
        assert_eq!(c, MapContents::default());
    }
}
