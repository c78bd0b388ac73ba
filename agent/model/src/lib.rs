//! The cluster as meshpath understands it, between the sources and the compiler.
//!
//! - [`changes`]: which Services and Pods changed between a source's snapshots, so that the agent
//!   compiles only what a change touched.
//! - [`cluster`] (re-exported here): Services, EndpointSlices, Pods and the [`ClusterModel`] that
//!   holds them, well-formed by construction (sources validate while they convert).
//! - [`istio`]: VirtualService and DestinationRule as routing rules, what can be wrong with one
//!   ([`istio::IstioInvalid`]) or worth a warning, and which Service a host names.
//! - [`error`]: what converting an object into the model reports ([`ConvertError`]); the sources
//!   wrap it with where the object came from.
//! - [`l7`]: the routing table the node proxy serves. The compiler produces it and the proxy
//!   consumes it; it lives here so that the proxy depends on these plain types only, not on the
//!   compiler (nor its map types), and because the Istio model already shares its retry
//!   conditions.

pub mod changes;
pub mod cluster;
pub mod error;
pub mod index;
pub mod istio;
pub mod l7;
pub mod locality;

pub use changes::{ChangeSet, Changes};
pub use cluster::{
    ClusterModel, ContainerPort, Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
    ExternalAccess, ExternalTrafficPolicy, LbPolicy, Namespace, ObjectRef, Pod, PodPlacement,
    Protocol, Service, ServicePort, SessionAffinity, SliceIndex, TargetPort,
};
pub use error::{ConvertError, Invalid, ObjectKey, ObjectKind};
pub use locality::{Locality, Node};
