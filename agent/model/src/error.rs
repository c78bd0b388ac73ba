//! What converting an object into the model reports: the object ([`ObjectKey`]), the field and the
//! problem ([`Invalid`]), as a [`ConvertError`]. Every source's conversion (Kubernetes kinds and
//! Istio's) produces these; a source wraps them with where the object came from.

use std::fmt;
use std::net::AddrParseError;

use crate::ObjectRef;

/// The kinds of object a source turns into model types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    Pod,
    Namespace,
    Node,
    VirtualService,
    DestinationRule,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Pod => "Pod",
            ObjectKind::Namespace => "Namespace",
            ObjectKind::Node => "Node",
            ObjectKind::VirtualService => "VirtualService",
            ObjectKind::DestinationRule => "DestinationRule",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// kind + namespace/name: what must be unique across all of a source's inputs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    /// The name is empty when the object has none (which is itself an error).
    pub id: ObjectRef,
}

impl ObjectKey {
    pub fn new(kind: ObjectKind, id: ObjectRef) -> Self {
        Self { kind, id }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.id.name.is_empty() {
            write!(f, "{} {}/<unnamed>", self.kind, self.id.namespace)
        } else {
            write!(f, "{} {}", self.kind, self.id)
        }
    }
}

/// Why a field's value is not acceptable. Display is the tail of the message, after the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("required")]
    Required,
    #[error("must be a mapping (a Kubernetes object), got {got}")]
    NotAMapping { got: &'static str },
    #[error("must be a string")]
    NotAString,
    #[error("must not be empty")]
    Empty,
    #[error("must be between {min} and {max}, got {got}")]
    OutOfRange { min: i64, max: i64, got: i64 },
    #[error("{value:?} is not a valid IPv4 address")]
    BadIp {
        value: String,
        #[source]
        source: AddrParseError,
    },
    #[error("IPv6 address {value:?} is not yet supported (only IPv4)")]
    Ipv6NotSupported { value: String },
    #[error("{value:?} is not supported (only {supported})")]
    NotSupported {
        value: String,
        supported: &'static str,
    },
    #[error("must be one of {expected}, got {value:?}")]
    NotOneOf {
        value: String,
        expected: &'static str,
    },
    #[error("invalid port name {value:?}: {reason}")]
    BadPortName { value: String, reason: &'static str },
    #[error("a {service_type} Service needs at least one port")]
    NoPorts { service_type: String },
    #[error("required when there is more than one port")]
    NameRequiredForMultiplePorts,
    #[error("duplicate value {value:?} (also at {first})")]
    Duplicate { value: String, first: String },
    #[error("{value:?} does not match spec.clusterIP {cluster_ip:?}")]
    ClusterIpsMismatch { value: String, cluster_ip: String },
    /// Problems only Istio objects have (durations, regexes, weights, ...).
    #[error(transparent)]
    Istio(crate::istio::IstioInvalid),
}

impl From<crate::istio::IstioInvalid> for Invalid {
    fn from(problem: crate::istio::IstioInvalid) -> Self {
        Invalid::Istio(problem)
    }
}

/// A k8s-openapi object that cannot become a model object. Display:
/// `Service default/web: spec.ports[0].port: must be between 1 and 65535, got 0`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {problem}")]
pub struct ConvertError {
    pub object: ObjectKey,
    /// Field path in the object as written in YAML/JSON, e.g. `spec.ports[0].targetPort`.
    pub field: String,
    /// Boxed to keep `Result<_, ConvertError>` small.
    pub problem: Box<Invalid>,
}
