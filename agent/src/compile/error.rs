//! Why a service could not be compiled. Each error names the object, the field and the reason.

use std::net::Ipv4Addr;

use crate::model::{ObjectRef, Protocol};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error(
        "Service {service}: spec.ports[{port_index}].targetPort: named port \"{target_port}\" is not \
         carried by any EndpointSlice of this service (slice ports: {slice_ports}); the service keeps \
         its previous backends"
    )]
    UnresolvedTargetPort {
        service: ObjectRef,
        port_index: usize,
        target_port: String,
        slice_ports: String,
    },
    #[error(
        "Service {service}: spec.ports[{port_index}]: {count} backends, more than the {max} a \
         frontend can hold; the service keeps its previous backends"
    )]
    TooManyBackends { service: ObjectRef, port_index: usize, count: usize, max: usize },
    #[error(
        "Service {service}: spec.clusterIP: {ip}:{port}/{} is already served by Service {other}; \
         this port is not programmed", protocol.as_str()
    )]
    FrontendConflict { service: ObjectRef, other: ObjectRef, ip: Ipv4Addr, port: u16, protocol: Protocol },
    #[error("Service {service}: no service id left (the datapath holds at most {} frontends)", meshpath_common::MAX_SERVICE_IDS - 1)]
    OutOfServiceIds { service: ObjectRef },
    #[error("backend {ip}:{port}: no backend id left (the datapath holds at most {} backends)", meshpath_common::MAX_BACKENDS)]
    OutOfBackendIds { ip: Ipv4Addr, port: u16 },
    #[error("Service {service}: spec.clusterIP: the service CIDR has no free address left")]
    ServiceCidrExhausted { service: ObjectRef },
}
