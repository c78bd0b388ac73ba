//! `discovery.k8s.io/v1` EndpointSlice → [`EndpointSlice`], `v1` Pod → [`Pod`].

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;

use meshpath_model::{
    ContainerPort, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, Pod, PodPlacement,
};

use super::fields::{non_empty, string_map, Ctx, Unique};
use super::{Converted, SkipReason, SERVICE_NAME_LABEL};
use crate::error::{ConvertError, Invalid, ObjectKind};

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
                addresses: exact(addresses),
                conditions: conditions(e.conditions.as_ref()),
                pod_name: e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| non_empty(&r.name))
                    .map(str::to_owned),
                zone: non_empty(&e.zone).map(str::to_owned),
                node_name: non_empty(&e.node_name).map(str::to_owned),
            })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;

    Ok(Converted::Accepted(EndpointSlice {
        id: ctx.id(),
        service_name: service_name.clone(),
        ports: exact(ports),
        endpoints: exact(endpoints),
    }))
}

/// `v` without spare capacity. Collecting through `Result` cannot size the vector up front, so
/// it grows by doubling: 10 endpoints would hold room for 16, and the model keeps every slice of
/// the cluster for the agent's life.
fn exact<T>(mut v: Vec<T>) -> Vec<T> {
    v.shrink_to_fit();
    v
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

/// A `v1` Pod: labels, `status.podIP` (IPv4), the ports of `spec.containers`, and where it runs.
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
    let placement = PodPlacement {
        uid: non_empty(&pod.metadata.uid).map(str::to_owned),
        node_name: pod
            .spec
            .as_ref()
            .and_then(|s| non_empty(&s.node_name))
            .map(str::to_owned),
        mirror_of: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::convert::MIRROR_ANNOTATION))
            .cloned(),
    };
    let labels = string_map(&pod.metadata.labels);
    Ok(Pod {
        id: ctx.id(),
        workload: workload_name(&pod.metadata, &labels),
        trace_sampling_hundredths: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PROXY_CONFIG_ANNOTATION))
            .and_then(|c| trace_sampling(c)),
        socket_redirect: super::socket_redirect(
            pod.metadata.annotations.as_ref(),
            &ctx.id().to_string(),
        ),
        labels,
        ip,
        container_ports,
        placement,
    })
}

/// Istio's per-pod proxy config; only `tracing.sampling` is read.
const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";

#[derive(serde::Deserialize)]
struct ProxyConfigAnnotation {
    tracing: Option<TracingConfig>,
}

#[derive(serde::Deserialize)]
struct TracingConfig {
    sampling: Option<f64>,
}

/// `tracing.sampling` (a percentage, 0 to 100) from the annotation's YAML, in hundredths of a
/// percent; an unreadable annotation or an out-of-range value is ignored, as istio-agent
/// falls back to the mesh default.
fn trace_sampling(yaml: &str) -> Option<u32> {
    let c: ProxyConfigAnnotation = serde_saphyr::from_str(yaml).ok()?;
    let pct = c.tracing?.sampling?;
    (0.0..=100.0)
        .contains(&pct)
        // In range: the cast cannot truncate.
        .then(|| (pct * 100.0).round() as u32)
}

/// Istio's workload name for a pod (see `Pod::workload`).
fn workload_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    labels: &std::collections::BTreeMap<String, String>,
) -> String {
    let pod_name = meta.name.clone().unwrap_or_default();
    let Some(owner) = meta.owner_references.as_ref().and_then(|o| o.first()) else {
        return pod_name;
    };
    if owner.kind == "ReplicaSet" {
        if let Some(hash) = labels.get("pod-template-hash") {
            if let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}")) {
                return deployment.to_owned();
            }
        }
    }
    owner.name.clone()
}

#[cfg(test)]
mod tests;
