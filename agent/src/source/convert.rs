//! k8s-openapi objects → model types, with the validation and defaulting the API server would do
//! (namespace `default`, `targetPort` = `port`, protocol TCP, affinity timeout 10800 s, ...).
//!
//! Shared by every source: the manifests directory today, the Kubernetes API later. The functions
//! return the first problem found as a [`ConvertError`] naming object and field; objects that are
//! valid but that meshpath does not program (ExternalName or headless Services, non-IPv4
//! EndpointSlices) come back as [`Converted::Skipped`], which is not an error.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::error::{ConvertError, Invalid, ObjectKey, ObjectKind};
use crate::model::{
    ContainerPort, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, LbPolicy, ObjectRef,
    Pod, Protocol, Service, ServicePort, SessionAffinity, TargetPort,
};

/// Annotation choosing the load-balancing policy of a Service.
pub const LB_POLICY_ANNOTATION: &str = "meshpath.io/lb-policy";
/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;
const MAX_AFFINITY_TIMEOUT_SECONDS: i64 = 86400;

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

/// Context for one object: builds errors that name it.
struct Ctx {
    object: ObjectKey,
}

impl Ctx {
    fn new(kind: ObjectKind, meta: &ObjectMeta) -> Result<Self, ConvertError> {
        let namespace = match meta.namespace.as_deref() {
            None | Some("") => "default",
            Some(ns) => ns,
        };
        let name = meta.name.clone().unwrap_or_default();
        let ctx = Ctx {
            object: ObjectKey::new(kind, ObjectRef::new(namespace, name)),
        };
        if ctx.object.id.name.is_empty() {
            return Err(ctx.err("metadata.name", Invalid::Required));
        }
        Ok(ctx)
    }

    fn id(&self) -> ObjectRef {
        self.object.id.clone()
    }

    fn err(&self, field: impl Into<String>, problem: Invalid) -> ConvertError {
        ConvertError {
            object: self.object.clone(),
            field: field.into(),
            problem,
        }
    }

    fn port(&self, field: impl Into<String>, value: i32) -> Result<u16, ConvertError> {
        match u16::try_from(value) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(self.err(
                field,
                Invalid::OutOfRange {
                    min: 1,
                    max: 65535,
                    got: value.into(),
                },
            )),
        }
    }

    /// `protocol`, TCP when absent.
    fn protocol(
        &self,
        field: impl Into<String>,
        value: Option<&str>,
    ) -> Result<Protocol, ConvertError> {
        match value {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some(other @ "SCTP") => Err(self.err(
                field,
                Invalid::NotSupported {
                    value: other.to_owned(),
                    supported: "TCP and UDP",
                },
            )),
            Some(other) => Err(self.err(
                field,
                Invalid::NotOneOf {
                    value: other.to_owned(),
                    expected: "TCP, UDP, SCTP",
                },
            )),
        }
    }

    fn ipv4(&self, field: impl Into<String>, value: &str) -> Result<Ipv4Addr, ConvertError> {
        match value.parse::<Ipv4Addr>() {
            Ok(ip) => Ok(ip),
            Err(_) if value.parse::<Ipv6Addr>().is_ok() => Err(self.err(
                field,
                Invalid::Ipv6NotSupported {
                    value: value.to_owned(),
                },
            )),
            Err(source) => Err(self.err(
                field,
                Invalid::BadIp {
                    value: value.to_owned(),
                    source,
                },
            )),
        }
    }

    /// A named port (`targetPort`, `containerPort` names): Kubernetes' IANA_SVC_NAME rules.
    fn port_name(&self, field: impl Into<String>, value: &str) -> Result<String, ConvertError> {
        let reason = if value.len() > 15 {
            Some("must be at most 15 characters")
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            Some("must consist of lower-case letters, digits and '-'")
        } else if !value.bytes().any(|b| b.is_ascii_lowercase()) {
            Some("must contain a letter (write a port number without quotes)")
        } else if value.starts_with('-') || value.ends_with('-') || value.contains("--") {
            Some("'-' must not start or end it nor be doubled")
        } else {
            None
        };
        match reason {
            None => Ok(value.to_owned()),
            Some(reason) => Err(self.err(
                field,
                Invalid::BadPortName {
                    value: value.to_owned(),
                    reason,
                },
            )),
        }
    }
}

/// Tracks values that must be unique within a list (port names, ...).
#[derive(Default)]
struct Unique(HashMap<String, String>);

impl Unique {
    fn check(&mut self, ctx: &Ctx, field: String, value: String) -> Result<(), ConvertError> {
        if let Some(first) = self.0.get(&value) {
            return Err(ctx.err(
                field,
                Invalid::Duplicate {
                    value,
                    first: first.clone(),
                },
            ));
        }
        self.0.insert(value, field);
        Ok(())
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.is_empty())
}

fn string_map(map: &Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    map.clone().unwrap_or_default()
}

/// A `v1` Service. ExternalName and headless Services are [`Converted::Skipped`].
pub fn service(svc: &core::Service) -> Result<Converted<Service>, ConvertError> {
    let ctx = Ctx::new(ObjectKind::Service, &svc.metadata)?;
    let default_spec = core::ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);

    let service_type = non_empty(&spec.type_).unwrap_or("ClusterIP");
    match service_type {
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        "ExternalName" => return Ok(Converted::Skipped(SkipReason::ExternalName)),
        other => {
            return Err(ctx.err(
                "spec.type",
                Invalid::NotOneOf {
                    value: other.to_owned(),
                    expected: "ClusterIP, NodePort, LoadBalancer, ExternalName",
                },
            ))
        }
    }

    let cluster_ip = cluster_ip(&ctx, spec)?;
    let Some(cluster_ip) = cluster_ip else {
        return Ok(Converted::Skipped(SkipReason::Headless));
    };

    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() {
        return Err(ctx.err(
            "spec.ports",
            Invalid::NoPorts {
                service_type: service_type.to_owned(),
            },
        ));
    }
    let mut names = Unique::default();
    let mut numbers = Unique::default();
    let ports = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let field = |name: &str| format!("spec.ports[{i}].{name}");
            let port = ctx.port(field("port"), p.port)?;
            let protocol = ctx.protocol(field("protocol"), p.protocol.as_deref())?;
            let name = non_empty(&p.name).map(str::to_owned);
            match &name {
                Some(name) => names.check(&ctx, field("name"), name.clone())?,
                None if ports.len() > 1 => {
                    return Err(ctx.err(field("name"), Invalid::NameRequiredForMultiplePorts))
                }
                None => {}
            }
            numbers.check(&ctx, field("port"), format!("{port}/{}", protocol.as_str()))?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(ctx.port(field("targetPort"), *n)?),
                Some(IntOrString::String(s)) => {
                    TargetPort::Name(ctx.port_name(field("targetPort"), s)?)
                }
            };
            Ok(ServicePort {
                name,
                port,
                target_port,
                protocol,
            })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;

    let session_affinity = match non_empty(&spec.session_affinity).unwrap_or("None") {
        "None" => None,
        "ClientIP" => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            let timeout_seconds = match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                Some(t) if (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&i64::from(t)) => {
                    t.unsigned_abs()
                }
                Some(t) => {
                    return Err(ctx.err(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        Invalid::OutOfRange {
                            min: 1,
                            max: MAX_AFFINITY_TIMEOUT_SECONDS,
                            got: t.into(),
                        },
                    ))
                }
            };
            Some(SessionAffinity { timeout_seconds })
        }
        other => {
            return Err(ctx.err(
                "spec.sessionAffinity",
                Invalid::NotOneOf {
                    value: other.to_owned(),
                    expected: "None, ClientIP",
                },
            ))
        }
    };

    let annotations = svc.metadata.annotations.as_ref();
    let lb_policy = match annotations
        .and_then(|a| a.get(LB_POLICY_ANNOTATION))
        .map(String::as_str)
    {
        None => None,
        Some("random") => Some(LbPolicy::Random),
        Some("round-robin") => Some(LbPolicy::RoundRobin),
        Some(other) => {
            return Err(ctx.err(
                format!("metadata.annotations[\"{LB_POLICY_ANNOTATION}\"]"),
                Invalid::NotOneOf {
                    value: other.to_owned(),
                    expected: "random, round-robin",
                },
            ))
        }
    };

    Ok(Converted::Accepted(Service {
        id: ctx.id(),
        cluster_ip: cluster_ip.ip,
        ports,
        selector: string_map(&spec.selector),
        session_affinity,
        lb_policy,
        labels: string_map(&svc.metadata.labels),
    }))
}

/// `Some(ip)` for a Service with a virtual IP (`ip` is `None` when left to allocation), `None`
/// for a headless one.
struct ClusterIp {
    ip: Option<Ipv4Addr>,
}

/// `spec.clusterIP`, falling back to `spec.clusterIPs[0]` as the API server does; `clusterIPs[0]`
/// must agree with `clusterIP` when both are given. The other `clusterIPs` (the second family of a
/// dual-stack Service) are not used.
fn cluster_ip(ctx: &Ctx, spec: &core::ServiceSpec) -> Result<Option<ClusterIp>, ConvertError> {
    let first = spec
        .cluster_ips
        .as_ref()
        .and_then(|ips| ips.first())
        .filter(|ip| !ip.is_empty());
    let (field, value) = match (non_empty(&spec.cluster_ip), first) {
        (Some(ip), Some(first)) if ip != first => {
            return Err(ctx.err(
                "spec.clusterIPs[0]",
                Invalid::ClusterIpsMismatch {
                    value: first.clone(),
                    cluster_ip: ip.to_owned(),
                },
            ))
        }
        (Some(ip), _) => ("spec.clusterIP", ip),
        (None, Some(first)) => ("spec.clusterIPs[0]", first.as_str()),
        (None, None) => return Ok(Some(ClusterIp { ip: None })),
    };
    if value == "None" {
        return Ok(None);
    }
    Ok(Some(ClusterIp {
        ip: Some(ctx.ipv4(field, value)?),
    }))
}

/// A `discovery.k8s.io/v1` EndpointSlice. Slices whose `addressType` is IPv6 or FQDN are
/// [`Converted::Skipped`].
pub fn endpoint_slice(
    slice: &discovery::EndpointSlice,
) -> Result<Converted<EndpointSlice>, ConvertError> {
    let ctx = Ctx::new(ObjectKind::EndpointSlice, &slice.metadata)?;
    match slice.address_type.as_str() {
        "IPv4" => {}
        t @ ("IPv6" | "FQDN") => {
            return Ok(Converted::Skipped(SkipReason::AddressType(t.to_owned())))
        }
        other => {
            return Err(ctx.err(
                "addressType",
                Invalid::NotOneOf {
                    value: other.to_owned(),
                    expected: "IPv4, IPv6, FQDN",
                },
            ))
        }
    }

    let labels = slice.metadata.labels.as_ref();
    let Some(service_name) = labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())
    else {
        return Err(ctx.err(
            format!("metadata.labels[\"{SERVICE_NAME_LABEL}\"]"),
            Invalid::Required,
        ));
    };

    let mut names = Unique::default();
    let ports = slice
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let field = |name: &str| format!("ports[{i}].{name}");
            let name = non_empty(&p.name).map(str::to_owned);
            names.check(&ctx, field("name"), name.clone().unwrap_or_default())?;
            // A nil port means "all ports" in Kubernetes; the model has no way to say that.
            let port = p
                .port
                .ok_or_else(|| ctx.err(field("port"), Invalid::Required))?;
            let port = ctx.port(field("port"), port)?;
            let protocol = ctx.protocol(field("protocol"), p.protocol.as_deref())?;
            Ok(EndpointPort {
                name,
                port,
                protocol,
            })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;

    let endpoints = slice
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if e.addresses.is_empty() {
                return Err(ctx.err(format!("endpoints[{i}].addresses"), Invalid::Empty));
            }
            let addresses = e
                .addresses
                .iter()
                .enumerate()
                .map(|(j, a)| ctx.ipv4(format!("endpoints[{i}].addresses[{j}]"), a))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Endpoint {
                addresses,
                conditions: conditions(e.conditions.as_ref()),
                pod_name: e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| non_empty(&r.name))
                    .map(str::to_owned),
            })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;

    Ok(Converted::Accepted(EndpointSlice {
        id: ctx.id(),
        service_name: service_name.clone(),
        ports,
        endpoints,
    }))
}

/// Absent conditions: `ready` true, `terminating` false, and `serving` the same as `ready` (the
/// EndpointSlice API's original rule "if nil, defer to ready"; it agrees with today's "nil means
/// true" whenever `ready` is absent too, and never makes an endpoint marked not ready serve).
fn conditions(c: Option<&discovery::EndpointConditions>) -> EndpointConditions {
    let default = EndpointConditions::default();
    let Some(c) = c else { return default };
    let ready = c.ready.unwrap_or(default.ready);
    EndpointConditions {
        ready,
        serving: c.serving.unwrap_or(ready),
        terminating: c.terminating.unwrap_or(default.terminating),
    }
}

/// A `v1` Pod: labels, `status.podIP` (IPv4) and the ports of `spec.containers`.
pub fn pod(pod: &core::Pod) -> Result<Pod, ConvertError> {
    let ctx = Ctx::new(ObjectKind::Pod, &pod.metadata)?;
    let ip = match pod.status.as_ref().and_then(|s| non_empty(&s.pod_ip)) {
        None => None,
        Some(ip) => Some(ctx.ipv4("status.podIP", ip)?),
    };
    let mut names = Unique::default();
    let mut container_ports = Vec::new();
    for (i, c) in pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .enumerate()
    {
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let field = |name: &str| format!("spec.containers[{i}].ports[{j}].{name}");
            let name = match non_empty(&p.name) {
                None => None,
                Some(name) => {
                    let name = ctx.port_name(field("name"), name)?;
                    names.check(&ctx, field("name"), name.clone())?;
                    Some(name)
                }
            };
            let port = ctx.port(field("containerPort"), p.container_port)?;
            let protocol = ctx.protocol(field("protocol"), p.protocol.as_deref())?;
            container_ports.push(ContainerPort {
                name,
                port,
                protocol,
            });
        }
    }
    Ok(Pod {
        id: ctx.id(),
        labels: string_map(&pod.metadata.labels),
        ip,
        container_ports,
    })
}

#[cfg(test)]
mod tests;
