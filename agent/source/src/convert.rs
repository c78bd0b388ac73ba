//! k8s-openapi objects → model types, with the validation and defaulting the API server would do
//! (namespace `default`, `targetPort` = `port`, protocol TCP, affinity timeout 10800 s, ...).
//!
//! Shared by every source: the manifests directory today, the Kubernetes API later. The functions
//! return the first problem found as a [`ConvertError`] naming object and field; objects that are
//! valid but that meshpath does not program (ExternalName or headless Services, non-IPv4
//! EndpointSlices) come back as [`Converted::Skipped`], which is not an error.

use std::fmt;

mod endpoints;
mod fields;
mod namespace;
mod service;
mod service_external;

pub use endpoints::{endpoint_slice, pod};
pub use namespace::{namespace, node, socket_redirect, SOCKET_REDIRECT_ANNOTATION};
pub use service::{external_name, service};

/// Annotation choosing the load-balancing policy of a Service.
pub const LB_POLICY_ANNOTATION: &str = "meshpath.io/lb-policy";
/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Annotation of a mirror pod (a static pod as the API server shows it) holding the static pod's
/// UID: the kubelet names the static pod's cgroup after that UID (its file's hash,
/// `kubernetes.io/config.hash`, set in pkg/kubelet/config/common.go), not after the mirror's
/// own `metadata.uid`.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;
pub(crate) const MAX_AFFINITY_TIMEOUT_SECONDS: i64 = 86400;

/// The result of converting an object that is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Converted<T> {
    /// meshpath programs this object.
    Accepted(T),
    /// Valid Kubernetes, but nothing for meshpath to program.
    Skipped(SkipReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// `spec.type: ExternalName`: a DNS alias, no virtual IP.
    ExternalName,
    /// `spec.clusterIP: None`: clients resolve the endpoints through DNS.
    Headless,
    /// An EndpointSlice whose `addressType` is IPv6 or FQDN; meshpath programs IPv4 only.
    /// Dual-stack Services get such slices from the EndpointSlice controller next to their IPv4
    /// ones, so they are expected input, not a mistake.
    AddressType(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::ExternalName => f.write_str("ExternalName Service, nothing to program"),
            SkipReason::Headless => {
                f.write_str("headless Service (clusterIP: None), nothing to program")
            }
            SkipReason::AddressType(t) => {
                write!(f, "addressType {t} is not supported yet (only IPv4)")
            }
        }
    }
}
