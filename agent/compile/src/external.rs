//! What the tc path on the node's uplink serves: each Service port's `nodePort`, and its port on
//! every `externalIPs` and load-balancer ingress address, balanced over the endpoints the
//! ClusterIP frontend of that port has (so a frontend shares its ClusterIP frontend's service id,
//! name and ready endpoints), rendered into `MP_TC_SVC` entries.
//!
//! `externalTrafficPolicy: Local` frontends hold the node's own endpoints only (a node without
//! one refuses the client, and the client's address is kept); `Cluster` frontends hold every
//! endpoint, those of other nodes flagged [`TC_FLAG_REMOTE`] so their flows are source-NATed to
//! the node's address, as kube-proxy does (kube-proxy masquerades local ones too; meshpath keeps
//! the client's address where the reply passes back through this node anyway).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use meshpath_common::tc::{
    TcSlot, TC_ANY_NODE_IP, TC_FLAG_LOCAL, TC_FLAG_NODE_PORT, TC_FLAG_REMOTE,
};
use meshpath_common::{ipv4_be, port_be, ServiceKey};
use meshpath_model::{ClusterModel, ExternalTrafficPolicy, ObjectRef, Protocol};

use crate::{proto_number, BackendAddr, Compiled, FrontendAddr};

/// Which endpoint addresses are this node's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalEndpoints {
    /// Every endpoint (an agent that knows no node name: a single-node set-up).
    All,
    /// Pod IPs of the pods scheduled on this node.
    Only(BTreeSet<Ipv4Addr>),
}

impl LocalEndpoints {
    /// The pods of `model` whose `spec.nodeName` is `node`, and the EndpointSlice endpoints
    /// whose `nodeName` is (an endpoint that names no node and no known pod counts as remote).
    pub fn of_node(model: &ClusterModel, node: &str) -> Self {
        let pods = model
            .pods
            .values()
            .filter(|p| p.placement.node_name.as_deref() == Some(node))
            .filter_map(|p| p.ip);
        let endpoints = model
            .endpoint_slices
            .values()
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.node_name.as_deref() == Some(node))
            .flat_map(|e| e.addresses.iter().copied());
        LocalEndpoints::Only(pods.chain(endpoints).collect())
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        match self {
            LocalEndpoints::All => true,
            LocalEndpoints::Only(set) => set.contains(&ip),
        }
    }
}

/// A NodePort or an external address:port that two Services claim: the first (by namespace and
/// name) keeps it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalError {
    #[error("Service {service}: {what} {port}/{} is already served by Service {other}; not programmed", protocol.as_str())]
    Conflict {
        service: ObjectRef,
        other: ObjectRef,
        /// `nodePort` or the external address.
        what: String,
        port: u16,
        protocol: Protocol,
    },
}

/// The exact contents of `MP_TC_SVC`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcContents {
    pub services: BTreeMap<ServiceKey, TcSlot>,
}

/// Renders every Service's external frontends from the compiled ClusterIP frontends.
pub fn render(
    model: &ClusterModel,
    compiled: &Compiled,
    local: &LocalEndpoints,
) -> (TcContents, Vec<ExternalError>) {
    let mut out = TcContents::default();
    let mut owners: BTreeMap<ServiceKey, ObjectRef> = BTreeMap::new();
    let mut errors = Vec::new();
    for (id, svc) in &model.services {
        let Some(cluster_ip) = svc
            .cluster_ip
            .or_else(|| compiled.allocated_ips.get(id).copied())
        else {
            continue;
        };
        let addresses = svc.external.addresses();
        let mut flags = 0;
        if svc.external.traffic_policy == ExternalTrafficPolicy::Local {
            flags |= TC_FLAG_LOCAL;
        }
        for port in &svc.ports {
            let addr = FrontendAddr {
                ip: cluster_ip,
                port: port.port,
                protocol: port.protocol,
            };
            // A ClusterIP frontend that did not compile (or belongs to another Service) has
            // nothing to balance over: no external frontend either.
            let Some(fe) = compiled.frontends.get(&addr).filter(|f| &f.service == id) else {
                continue;
            };
            let only_local = svc.external.traffic_policy == ExternalTrafficPolicy::Local;
            let backends: Vec<(&BackendAddr, bool)> = fe
                .backends
                .iter()
                .map(|b| (b, !local.contains(b.ip)))
                .filter(|(_, remote)| !only_local || !remote)
                .collect();
            let mut frontends: Vec<(ServiceKey, u8, String)> = addresses
                .iter()
                .map(|ip| {
                    let key = ServiceKey::new(
                        ipv4_be(ip.octets()),
                        port_be(port.port),
                        proto_number(port.protocol),
                        0,
                    );
                    (key, flags, ip.to_string())
                })
                .collect();
            if let Some(node_port) = port.node_port {
                let key = ServiceKey::new(
                    TC_ANY_NODE_IP,
                    port_be(node_port),
                    proto_number(port.protocol),
                    0,
                );
                frontends.push((key, flags | TC_FLAG_NODE_PORT, "nodePort".into()));
            }
            for (key, flags, what) in frontends {
                if let Some(other) = owners.get(&key) {
                    errors.push(ExternalError::Conflict {
                        service: id.clone(),
                        other: other.clone(),
                        what,
                        port: u16::from_be(key.port_be),
                        protocol: port.protocol,
                    });
                    continue;
                }
                owners.insert(key, id.clone());
                let affinity_sec = fe.affinity_timeout_sec.unwrap_or(0);
                insert_frontend(&mut out, key, flags, fe.svc_id, affinity_sec, &backends);
            }
        }
    }
    (out, errors)
}

fn insert_frontend(
    out: &mut TcContents,
    key: ServiceKey,
    flags: u8,
    svc_id: u32,
    affinity_sec: u32,
    backends: &[(&BackendAddr, bool)],
) {
    let header = TcSlot {
        backend_ip_be: 0,
        backend_port_be: 0,
        count: backends.len() as u16,
        svc_id,
        flags,
        _pad: [0; 3],
        affinity_sec,
    };
    out.services.insert(key, header);
    for (i, (b, remote)) in backends.iter().enumerate() {
        out.services.insert(
            key.with_slot(i as u16 + 1),
            TcSlot {
                backend_ip_be: ipv4_be(b.ip.octets()),
                backend_port_be: port_be(b.port),
                flags: if *remote {
                    flags | TC_FLAG_REMOTE
                } else {
                    flags
                },
                ..header
            },
        );
    }
}

#[cfg(test)]
#[path = "external_tests.rs"]
mod tests;
