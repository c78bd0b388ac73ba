//! The pure step between a source and the maps: `ClusterModel` → the frontends and backends the
//! datapath should hold. No I/O: the same model and previous result always give the same output,
//! so tests call it directly.
//!
//! A service that cannot be compiled (a named targetPort no EndpointSlice carries, too many
//! backends, a ClusterIP:port another service already claims) keeps the frontends it had in the
//! previous result: the last good config stays live, and the error names object, field and reason.
//!
//! Also pure, on the compiled result: [`l7`] (the proxy's routing table), [`limits`]
//! (connection-limit groups), [`steer`] (which frontends go to the proxy) and [`ejection`]
//! (outlier ejections in the kernel's selection). [`incremental`] recompiles only the Services a
//! change touched, to the same result.

mod alloc;
pub mod conn_reset;
pub mod ejection;
mod error;
pub mod external;
pub mod incremental;
pub mod l7;
pub mod lb;
pub mod limits;
pub mod redirect;
mod render;
mod resolve;
pub mod steer;
pub mod tcp_weights;
#[cfg(test)]
mod tests;
mod weighted;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use meshpath_common::{
    ipv4_be, port_be, Backend, ServiceKey, ServiceName, ServiceValue, MAX_SLOTS, PROTO_TCP,
    PROTO_UDP,
};

use meshpath_model::{ClusterModel, LbPolicy, ObjectRef, Protocol, Service};

pub use render::service_key;

pub use error::CompileError;

/// Settings that shape compilation, from the agent's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Policy for services without a `meshpath.io/lb-policy` annotation.
    pub default_lb_policy: LbPolicy,
    /// Range to allocate ClusterIPs from for manifests that leave `spec.clusterIP` out.
    pub service_cidr: (Ipv4Addr, u8),
    /// The node this agent runs on: its locality is the proxy's (`localityLbSetting`).
    pub node_name: Option<String>,
    /// Frontends the datapath's maps hold (its service-id arrays' size; ids `1..max`).
    pub max_frontends: u32,
    /// Backends the datapath's backend map holds (ids `1..=max`).
    pub max_backends: u32,
    /// Entries the datapath's service map holds (a frontend's header and its backend slots).
    pub max_service_entries: u32,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            default_lb_policy: LbPolicy::Random,
            service_cidr: (Ipv4Addr::new(10, 96, 0, 0), 12),
            node_name: None,
            max_frontends: meshpath_common::MAX_SERVICE_IDS,
            max_backends: meshpath_common::MAX_BACKENDS,
            max_service_entries: meshpath_common::MAX_SERVICE_ENTRIES,
        }
    }
}

/// What a client connects to: ClusterIP, port, protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

/// Where a translated socket goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub svc_id: u32,
    pub service: ObjectRef,
    pub port_name: Option<String>,
    pub lb_policy: LbPolicy,
    /// `Some(timeout)` for `sessionAffinity: ClientIP`.
    pub affinity_timeout_sec: Option<u32>,
    /// DestinationRule `connectionPool.tcp.maxConnections`, enforced in the kernel when the
    /// frontend stays on the kernel path.
    pub max_connections: Option<u32>,
    /// Where `lb_policy` comes from ([`lb::apply_rules`] sets DestinationRule policies).
    pub lb_origin: lb::LbOrigin,
    /// Whether the node proxy handles the frontend, and why ([`lb::mark_proxy`]).
    pub proxy: lb::ProxyPart,
    /// Sorted, without duplicates.
    pub backends: Vec<BackendAddr>,
}

impl Frontend {
    /// `namespace/name:port-name` (or the port number when the port has no name).
    pub fn display_name(&self, addr: &FrontendAddr) -> String {
        match &self.port_name {
            Some(p) if !p.is_empty() => format!("{}:{p}", self.service),
            _ => format!("{}:{}", self.service, addr.port),
        }
    }
}

/// The result of one compilation; also the memory the next one starts from (stable ids,
/// allocated ClusterIPs, last good frontends of services that fail to compile now).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub frontends: BTreeMap<FrontendAddr, Frontend>,
    pub backend_ids: BTreeMap<BackendAddr, u32>,
    /// ClusterIPs allocated for services whose manifests have none.
    pub allocated_ips: BTreeMap<ObjectRef, Ipv4Addr>,
}

/// The exact contents the datapath maps should have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    /// service id → "namespace/name:port" for `meshpath status`.
    pub names: BTreeMap<u32, ServiceName>,
    /// service id → kernel connection limit, for frontends that have one.
    pub conn_limits: BTreeMap<u32, u32>,
    /// {frontend, slot} → what that slot's connects count against (route destinations of
    /// VirtualService `tcp:` slots; see [`limits`]). Filled by [`limits::RouteLimits::render`].
    pub slot_limits: BTreeMap<ServiceKey, meshpath_common::SockLimit>,
    /// group id → the route destination's `maxConnections`.
    pub group_limits: BTreeMap<u32, u32>,
    /// group id → the destination's Envoy cluster name, for `meshpath status`.
    pub group_names: BTreeMap<u32, ServiceName>,
}

pub fn compile(
    model: &ClusterModel,
    opts: &CompileOptions,
    previous: &Compiled,
) -> (Compiled, Vec<CompileError>) {
    let mut errors = Vec::new();
    let cluster_ips = alloc::cluster_ips(model, opts, previous, &mut errors);
    let mut svc_ids = alloc::IdAllocator::new(
        previous.frontends.iter().map(|(addr, f)| (*addr, f.svc_id)),
        opts.max_frontends.saturating_sub(1),
    );

    let mut frontends: BTreeMap<FrontendAddr, Frontend> = BTreeMap::new();
    let slices = meshpath_model::SliceIndex::new(model);
    for (id, svc) in &model.services {
        let Some(&ip) = cluster_ips.get(id) else {
            continue;
        };
        match compile_service(model, &slices, opts, svc, ip) {
            Ok(compiled) => {
                for (addr, mut fe) in compiled {
                    if let Some(owner) = frontends.get(&addr) {
                        errors.push(CompileError::FrontendConflict {
                            origin: error::origin_of(svc),
                            service: id.clone(),
                            other: owner.service.clone(),
                            ip: addr.ip,
                            port: addr.port,
                            protocol: addr.protocol,
                        });
                        continue;
                    }
                    match svc_ids.get_or_allocate(addr) {
                        Some(svc_id) => fe.svc_id = svc_id,
                        None => {
                            errors.push(CompileError::OutOfServiceIds {
                                origin: error::origin_of(svc),
                                service: id.clone(),
                                limit: opts.max_frontends.saturating_sub(1),
                            });
                            continue;
                        }
                    }
                    frontends.insert(addr, fe);
                }
            }
            Err(err) => {
                errors.push(*err);
                // Last good: keep what this service had before, unless its address is taken now.
                for (addr, fe) in previous.frontends.iter().filter(|(_, f)| &f.service == id) {
                    frontends.entry(*addr).or_insert_with(|| fe.clone());
                    svc_ids.reserve(*addr, fe.svc_id);
                }
            }
        }
    }

    let used: BTreeSet<BackendAddr> = frontends
        .values()
        .flat_map(|f| f.backends.iter().copied())
        .collect();
    let mut backend_alloc = alloc::IdAllocator::new(
        previous
            .backend_ids
            .iter()
            .filter(|(addr, _)| used.contains(addr))
            .map(|(a, id)| (*a, *id)),
        opts.max_backends,
    );
    let mut backend_ids = BTreeMap::new();
    for addr in used {
        match backend_alloc.get_or_allocate(addr) {
            Some(id) => {
                backend_ids.insert(addr, id);
            }
            None => errors.push(CompileError::OutOfBackendIds {
                ip: addr.ip,
                port: addr.port,
                limit: opts.max_backends,
            }),
        }
    }
    // A frontend whose backend got no id (table full) would point at nothing: drop those backends.
    for fe in frontends.values_mut() {
        fe.backends.retain(|b| backend_ids.contains_key(b));
    }

    let allocated_ips = model
        .services
        .iter()
        .filter(|(_, s)| s.cluster_ip.is_none())
        .filter_map(|(id, _)| cluster_ips.get(id).map(|ip| (id.clone(), *ip)))
        .collect();
    (
        Compiled {
            frontends,
            backend_ids,
            allocated_ips,
        },
        errors,
    )
}

fn compile_service(
    model: &ClusterModel,
    slices: &meshpath_model::SliceIndex<'_>,
    opts: &CompileOptions,
    svc: &Service,
    ip: Ipv4Addr,
) -> Result<Vec<(FrontendAddr, Frontend)>, Box<CompileError>> {
    let mut out = Vec::with_capacity(svc.ports.len());
    for (index, port) in svc.ports.iter().enumerate() {
        let backends = resolve::backends_for_port(model, slices, svc, index, port)?;
        if backends.len() > MAX_SLOTS as usize {
            return Err(Box::new(CompileError::TooManyBackends {
                origin: error::origin_of(svc),
                service: svc.id.clone(),
                port_index: index,
                count: backends.len(),
                max: MAX_SLOTS as usize,
            }));
        }
        let addr = FrontendAddr {
            ip,
            port: port.port,
            protocol: port.protocol,
        };
        out.push((
            addr,
            Frontend {
                svc_id: 0,
                service: svc.id.clone(),
                port_name: port.name.clone(),
                lb_policy: svc.lb_policy.unwrap_or(opts.default_lb_policy),
                affinity_timeout_sec: svc.session_affinity.map(|a| a.timeout_seconds),
                max_connections: None,
                lb_origin: match svc.lb_policy {
                    Some(_) => lb::LbOrigin::Annotation,
                    None => lb::LbOrigin::Default,
                },
                proxy: lb::ProxyPart::None,
                backends,
            },
        ));
    }
    Ok(out)
}

fn backend_value(addr: &BackendAddr) -> Backend {
    Backend {
        ip_be: ipv4_be(addr.ip.octets()),
        port_be: port_be(addr.port),
        proto: proto_number(addr.protocol),
        _pad0: 0,
    }
}

pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}
