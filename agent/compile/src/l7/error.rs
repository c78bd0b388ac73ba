//! Why a VirtualService could not be compiled against the other objects, or compiled with a
//! destination that does not exist yet.

use meshpath_model::ObjectRef;

/// A VirtualService that cannot be compiled against the other objects, or (a warning) one
/// compiled with a route to a subset not defined yet. Each names the file (`origin`), the
/// object, the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum L7Error {
    #[error(
        "{origin}: VirtualService {vs}: {field}: host {host:?} names no Service; the \
         VirtualService keeps its previous routes"
    )]
    UnknownHost {
        origin: String,
        vs: ObjectRef,
        field: String,
        host: String,
    },
    /// A warning, not an error (see [`L7Error::is_warning`]).
    #[error(
        "{origin}: VirtualService {vs}: {field}: subset {subset:?} of Service {service} is not \
         defined ({}); {} until a DestinationRule defines it",
        subset_hint(rule, service),
        unrouted(field)
    )]
    UnknownSubset {
        origin: String,
        vs: ObjectRef,
        field: String,
        service: ObjectRef,
        subset: String,
        /// The DestinationRule that applies to the service, if any.
        rule: Option<ObjectRef>,
    },
    /// A warning, not an error (see [`L7Error::is_warning`]).
    #[error(
        "{origin}: VirtualService {vs}: {field}: wildcard host {host:?} names a ServiceEntry \
         host, and meshpath has no ServiceEntry: requests routed to it get 503 (no cluster)"
    )]
    WildcardDestination {
        origin: String,
        vs: ObjectRef,
        field: String,
        host: String,
    },
    #[error(
        "{origin}: VirtualService {vs}: {field}: Service {service} has no TCP port {port}; the \
         VirtualService keeps its previous routes"
    )]
    UnknownPort {
        origin: String,
        vs: ObjectRef,
        field: String,
        service: ObjectRef,
        port: u16,
    },
    #[error(
        "{origin}: VirtualService {vs}: {field}: Service {service} has ports {ports} and none is \
         {listener}, the port routed from: set port.number; the VirtualService keeps its previous \
         routes"
    )]
    PortRequired {
        origin: String,
        vs: ObjectRef,
        field: String,
        service: ObjectRef,
        ports: String,
        listener: u16,
    },
}

impl L7Error {
    /// True when the VirtualService is applied anyway (the problem only affects the requests
    /// routed to the field), as Istio accepts it and only its analyzer reports it: a subset no
    /// DestinationRule defines yet, a wildcard destination host. Every other problem keeps the VirtualService's last good
    /// routes.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            L7Error::UnknownSubset { .. } | L7Error::WildcardDestination { .. }
        )
    }

    /// `file:line` of the VirtualService's document (or whatever its source records).
    pub fn origin(&self) -> &str {
        match self {
            L7Error::UnknownHost { origin, .. }
            | L7Error::UnknownSubset { origin, .. }
            | L7Error::WildcardDestination { origin, .. }
            | L7Error::UnknownPort { origin, .. }
            | L7Error::PortRequired { origin, .. } => origin,
        }
    }

    /// The VirtualService the error is about.
    pub fn virtual_service(&self) -> &ObjectRef {
        match self {
            L7Error::UnknownHost { vs, .. }
            | L7Error::UnknownSubset { vs, .. }
            | L7Error::WildcardDestination { vs, .. }
            | L7Error::UnknownPort { vs, .. }
            | L7Error::PortRequired { vs, .. } => vs,
        }
    }

    /// The offending field of the VirtualService.
    pub fn field(&self) -> &str {
        match self {
            L7Error::UnknownHost { field, .. }
            | L7Error::UnknownSubset { field, .. }
            | L7Error::WildcardDestination { field, .. }
            | L7Error::UnknownPort { field, .. }
            | L7Error::PortRequired { field, .. } => field,
        }
    }
}

/// What happens to traffic a route sends to a destination that does not exist: an HTTP request
/// gets Envoy's 503 NC, a connection of a `tcp:` route is refused (see `weighted::slots`).
fn unrouted(field: &str) -> &'static str {
    if field.starts_with("spec.tcp") {
        "connections routed to it are refused"
    } else {
        "requests routed to it get 503 (no cluster)"
    }
}

fn subset_hint(rule: &Option<ObjectRef>, service: &ObjectRef) -> String {
    match rule {
        Some(rule) => format!("DestinationRule {rule} has no such subset"),
        None => format!("no DestinationRule has host {}", service.name),
    }
}
