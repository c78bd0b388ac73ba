//! `v1` Service → [`Service`].

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use meshpath_model::{LbPolicy, ObjectRef, Service, ServicePort, SessionAffinity, TargetPort};

use super::fields::{non_empty, string_map, Ctx, Unique};
use super::{
    Converted, SkipReason, DEFAULT_AFFINITY_TIMEOUT_SECONDS, LB_POLICY_ANNOTATION,
    MAX_AFFINITY_TIMEOUT_SECONDS,
};
use crate::error::{ConvertError, Invalid, ObjectKind};

/// A `v1` Service of `spec.type: ExternalName` as its id and `spec.externalName` (lowercase, no
/// trailing dot); `None` for every other type (see [`service`]).
pub fn external_name(
    svc: &core::Service,
) -> Option<Result<Converted<(ObjectRef, String)>, ConvertError>> {
    let spec = svc.spec.as_ref()?;
    if non_empty(&spec.type_) != Some("ExternalName") {
        return None;
    }
    let ctx = match Ctx::new(ObjectKind::Service, &svc.metadata) {
        Ok(ctx) => ctx,
        Err(e) => return Some(Err(e)),
    };
    let name = non_empty(&spec.external_name).map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    Some(match name {
        Some(n) if !n.is_empty() => Ok(Converted::Accepted((ctx.id(), n))),
        _ => Err(ctx.err("spec.externalName", Invalid::Required)),
    })
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

    let cluster_ip = match cluster_ip(&ctx, spec)? {
        ClusterIp::Headless => return Ok(Converted::Skipped(SkipReason::Headless)),
        ClusterIp::Unset => None,
        ClusterIp::Ip(ip) => Some(ip),
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
                app_protocol: non_empty(&p.app_protocol).map(str::to_ascii_lowercase),
                node_port: match p.node_port {
                    // A ClusterIP Service has none; 0 is what an unset field reads as.
                    None | Some(0) => None,
                    Some(n) => Some(ctx.port(field("nodePort"), n)?),
                },
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

    let external = super::service_external::external_access(&ctx, svc, spec)?;

    Ok(Converted::Accepted(Service {
        id: ctx.id(),
        cluster_ip,
        ports,
        selector: string_map(&spec.selector),
        session_affinity,
        lb_policy,
        labels: string_map(&svc.metadata.labels),
        origin: None,
        external,
    }))
}

enum ClusterIp {
    /// `None`: no virtual IP.
    Headless,
    /// Left to allocation.
    Unset,
    Ip(Ipv4Addr),
}

/// `spec.clusterIP`, falling back to `spec.clusterIPs[0]` as the API server does; `clusterIPs[0]`
/// must agree with `clusterIP` when both are given. The other `clusterIPs` (the second family of a
/// dual-stack Service) are not used.
fn cluster_ip(ctx: &Ctx, spec: &core::ServiceSpec) -> Result<ClusterIp, ConvertError> {
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
        (None, None) => return Ok(ClusterIp::Unset),
    };
    if value == "None" {
        return Ok(ClusterIp::Headless);
    }
    Ok(ClusterIp::Ip(ctx.ipv4(field, value)?))
}

#[cfg(test)]
mod tests;
