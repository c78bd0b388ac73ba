//! Why a service could not be compiled. Each error names the object, the field and the reason.

use std::net::Ipv4Addr;

use meshpath_model::{ObjectRef, Protocol};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error(
        "{origin}: Service {service}: spec.ports[{port_index}].targetPort: named port \"{target_port}\" is not \
         carried by any EndpointSlice of this service (slice ports: {slice_ports}); the service keeps \
         its previous backends"
    )]
    UnresolvedTargetPort {
        origin: String,
        service: ObjectRef,
        port_index: usize,
        target_port: String,
        slice_ports: String,
    },
    #[error(
        "{origin}: Service {service}: spec.ports[{port_index}]: {count} backends, more than the {max} a \
         frontend can hold; the service keeps its previous backends"
    )]
    TooManyBackends {
        origin: String,
        service: ObjectRef,
        port_index: usize,
        count: usize,
        max: usize,
    },
    #[error(
        "{origin}: Service {service}: spec.clusterIP: {ip}:{port}/{} is already served by Service {other}; \
         this port is not programmed", protocol.as_str()
    )]
    FrontendConflict {
        origin: String,
        service: ObjectRef,
        other: ObjectRef,
        ip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
    },
    #[error("{origin}: Service {service}: no service id left (the datapath holds at most {limit} frontends: --max-frontends)")]
    OutOfServiceIds {
        origin: String,
        service: ObjectRef,
        limit: u32,
    },
    #[error("backend {ip}:{port}: no backend id left (the datapath holds at most {limit} backends: --max-backends)")]
    OutOfBackendIds { ip: Ipv4Addr, port: u16, limit: u32 },
    #[error(
        "{origin}: Service {service}: spec.clusterIP: the service CIDR has no free address left"
    )]
    ServiceCidrExhausted { origin: String, service: ObjectRef },
}

impl CompileError {
    /// `file:line` of the Service's document (or whatever its source records); `None` for a
    /// backend, which has no document of its own.
    pub fn origin(&self) -> Option<&str> {
        match self {
            CompileError::UnresolvedTargetPort { origin, .. }
            | CompileError::TooManyBackends { origin, .. }
            | CompileError::FrontendConflict { origin, .. }
            | CompileError::OutOfServiceIds { origin, .. }
            | CompileError::ServiceCidrExhausted { origin, .. } => Some(origin),
            CompileError::OutOfBackendIds { .. } => None,
        }
    }

    /// The Service the error is about.
    pub fn service(&self) -> Option<&ObjectRef> {
        match self {
            CompileError::UnresolvedTargetPort { service, .. }
            | CompileError::TooManyBackends { service, .. }
            | CompileError::FrontendConflict { service, .. }
            | CompileError::OutOfServiceIds { service, .. }
            | CompileError::ServiceCidrExhausted { service, .. } => Some(service),
            CompileError::OutOfBackendIds { .. } => None,
        }
    }
}

/// The origin of a service for error messages.
pub fn origin_of(svc: &meshpath_model::Service) -> String {
    svc.origin
        .clone()
        .unwrap_or_else(|| "<unknown source>".into())
}
