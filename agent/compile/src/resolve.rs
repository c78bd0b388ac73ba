//! Which backends serve one port of a Service: EndpointSlice ports matched the way kube-proxy
//! matches them, endpoint conditions read the way kube-proxy reads them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use meshpath_model::{
    ClusterModel, Endpoint, EndpointSlice, ObjectRef, Service, ServicePort, SliceIndex, TargetPort,
};

use super::{BackendAddr, CompileError};

pub fn backends_for_port(
    model: &ClusterModel,
    slices: &SliceIndex<'_>,
    svc: &Service,
    port_index: usize,
    port: &ServicePort,
) -> Result<Vec<BackendAddr>, Box<CompileError>> {
    // (address, target port, usable-while-terminating only)
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    let mut unresolved = Vec::new();
    for slice in slices.slices_for(&svc.id) {
        let slice_port = slice_port_for(slice, port);
        for ep in &slice.endpoints {
            let target = match slice_port {
                Some(p) => Some(p),
                None => target_port_from_pod(model, &svc.id, ep, port),
            };
            let Some(target) = target else {
                unresolved.push(slice);
                continue;
            };
            let c = ep.conditions;
            let set = if c.ready {
                &mut ready
            } else if c.serving && c.terminating {
                &mut terminating
            } else {
                continue;
            };
            set.extend(ep.addresses.iter().map(|ip: &Ipv4Addr| BackendAddr {
                ip: *ip,
                port: target,
                protocol: port.protocol,
            }));
        }
    }
    if ready.is_empty() && terminating.is_empty() && !unresolved.is_empty() {
        if let TargetPort::Name(name) = &port.target_port {
            let slice_ports = unresolved
                .iter()
                .flat_map(|s| s.ports.iter())
                .map(|p| format!("{}={}", p.name.as_deref().unwrap_or("\"\""), p.port))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Box::new(CompileError::UnresolvedTargetPort {
                origin: super::error::origin_of(svc),
                service: svc.id.clone(),
                port_index,
                target_port: name.clone(),
                slice_ports: if slice_ports.is_empty() {
                    "none".into()
                } else {
                    slice_ports
                },
            }));
        }
    }
    // Like kube-proxy: terminating-but-serving endpoints only when nothing is ready.
    let chosen = if ready.is_empty() { terminating } else { ready };
    Ok(chosen.into_iter().collect())
}

/// The slice port that serves `port`: the one named after the Service port (that is how the
/// EndpointSlice controller names them, with named targetPorts already resolved); for hand-written
/// slices also one named after a named targetPort; failing both, a numeric targetPort itself.
fn slice_port_for(slice: &EndpointSlice, port: &ServicePort) -> Option<u16> {
    let same_proto = || slice.ports.iter().filter(|p| p.protocol == port.protocol);
    let svc_name = port.name.as_deref().unwrap_or("");
    if let Some(p) = same_proto().find(|p| p.name.as_deref().unwrap_or("") == svc_name) {
        return Some(p.port);
    }
    match &port.target_port {
        TargetPort::Name(n) => same_proto()
            .find(|p| p.name.as_deref() == Some(n))
            .map(|p| p.port),
        TargetPort::Number(n) => Some(*n),
    }
}

/// A named targetPort resolved through the endpoint's Pod, as the EndpointSlice controller does.
fn target_port_from_pod(
    model: &ClusterModel,
    svc: &ObjectRef,
    ep: &Endpoint,
    port: &ServicePort,
) -> Option<u16> {
    let TargetPort::Name(name) = &port.target_port else {
        return None;
    };
    let pod = model
        .pods
        .get(&ObjectRef::new(&svc.namespace, ep.pod_name.as_deref()?))?;
    pod.container_ports
        .iter()
        .find(|c| c.protocol == port.protocol && c.name.as_deref() == Some(name))
        .map(|c| c.port)
}
