//! The in-memory model of the cluster that every source (manifests directory today, the Kubernetes
//! API later) produces. Sources validate while they convert, so everything here is well-formed:
//! addresses parsed, ports in range, names present. Cross-object questions (which EndpointSlice
//! port does a named targetPort resolve to?) are answered by `compile`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// namespace/name of an object; namespace defaults to `default` as in Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// How a frontend picks among its ready backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum LbPolicy {
    #[default]
    Random,
    RoundRobin,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    /// `targetPort`; Kubernetes defaults it to `port` when absent, and so do sources.
    pub target_port: TargetPort,
    pub protocol: Protocol,
    /// `appProtocol`, lowercased (`http`, `kubernetes.io/h2c`...), when written.
    pub app_protocol: Option<String>,
    /// `nodePort` of a `NodePort` or `LoadBalancer` Service (the API server allocates one when
    /// the manifest leaves it out; a manifests source without one gets none).
    pub node_port: Option<u16>,
}

impl ServicePort {
    /// Declared HTTP, as Istio reads a port: named `http` or `http-<suffix>`, or `appProtocol:
    /// http`. (Unlike `compile`'s broader "may carry HTTP", an unnamed port is not declared.)
    pub fn declared_http(&self) -> bool {
        let name = self
            .name
            .as_deref()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let by_name = name == "http" || name.starts_with("http-");
        let by_app = self.app_protocol.as_deref() == Some("http");
        self.protocol == Protocol::Tcp && (by_name || by_app)
    }
}

/// `externalTrafficPolicy`: whether traffic from outside the node may go to another node's
/// endpoints (`Cluster`, the client's address then hidden behind the node's) or only to this
/// node's (`Local`, the client's address kept).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExternalTrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// How a Service is reached from outside the cluster, besides its ports' `nodePort`s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalAccess {
    /// `spec.externalIPs` (IPv4 only; other families are ignored by the source).
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` of a `LoadBalancer` Service.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    pub traffic_policy: ExternalTrafficPolicy,
}

impl ExternalAccess {
    /// Every external address, each once, in order.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = Vec::new();
        for ip in self.external_ips.iter().chain(&self.load_balancer_ips) {
            if !out.contains(ip) {
                out.push(*ip);
            }
        }
        out
    }
}

/// `sessionAffinity: ClientIP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionAffinity {
    /// `sessionAffinityConfig.clientIP.timeoutSeconds`, default 10800 as in Kubernetes.
    pub timeout_seconds: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub id: ObjectRef,
    /// `spec.clusterIP`; `None` when the manifest leaves it out (the API server would allocate
    /// one; `compile` allocates it from the service CIDR instead).
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    pub selector: BTreeMap<String, String>,
    pub session_affinity: Option<SessionAffinity>,
    /// From the `meshpath.io/lb-policy` annotation; `None` means the agent's default.
    pub lb_policy: Option<LbPolicy>,
    pub labels: BTreeMap<String, String>,
    /// Where the object came from (a manifest file, the API server), so errors found later, when
    /// compiling, can name it too. Set by the source that assembles the model.
    pub origin: Option<String>,
    /// External IPs, load-balancer IPs and `externalTrafficPolicy`.
    pub external: ExternalAccess,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPort {
    /// Kubernetes names EndpointSlice ports after the Service port they serve.
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// Kubernetes treats an absent condition as true for `ready` and `serving`, false for `terminating`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointConditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Default for EndpointConditions {
    fn default() -> Self {
        Self {
            ready: true,
            serving: true,
            terminating: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<Ipv4Addr>,
    pub conditions: EndpointConditions,
    /// `targetRef.name` when it refers to a Pod.
    pub pod_name: Option<String>,
    /// `zone`: the zone of the endpoint's node, as the EndpointSlice controller copied it.
    pub zone: Option<String>,
    /// `nodeName`: the node it runs on, for the node's locality.
    pub node_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub id: ObjectRef,
    /// The `kubernetes.io/service-name` label: the Service (same namespace) this slice serves.
    pub service_name: String,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pod {
    pub id: ObjectRef,
    pub labels: BTreeMap<String, String>,
    /// `status.podIP`.
    pub ip: Option<Ipv4Addr>,
    pub container_ports: Vec<ContainerPort>,
    pub placement: PodPlacement,
    /// The workload the pod belongs to, named as Istio names it (`source_workload`): a
    /// ReplicaSet owner without its pod-template-hash suffix (the Deployment), another owner's
    /// name, else the pod's own name.
    pub workload: String,
    /// `tracing.sampling` of the `proxy.istio.io/config` annotation, in hundredths of a percent
    /// (integer so the model stays `Eq`).
    pub trace_sampling_hundredths: Option<u32>,
    /// The `meshpath.io/socket-redirect` annotation (`"true"`/`"false"`); `None`: the
    /// namespace's decides.
    pub socket_redirect: Option<bool>,
}

/// A Namespace: only what meshpath reads of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Namespace {
    /// As sources key objects (a cluster-scoped object gets namespace `default`).
    pub id: ObjectRef,
    /// `metadata.name`.
    pub name: String,
    /// The `meshpath.io/socket-redirect` annotation, for the namespace's pods without their own.
    pub socket_redirect: Option<bool>,
}

/// Where a pod runs, for telling which local pods the attached cgroup covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodPlacement {
    /// `metadata.uid`.
    pub uid: Option<String>,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// The `kubernetes.io/config.mirror` annotation of a mirror pod: the static pod's UID, which
    /// names its cgroup.
    pub mirror_of: Option<String>,
}

/// One snapshot of everything a source knows.
///
/// Services and EndpointSlices, the bulk of a large cluster, are shared (`Arc`): a source that
/// must copy the model while a consumer still holds the previous snapshot (copy on write)
/// copies the maps' keys and pointers, not every object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterModel {
    pub services: BTreeMap<ObjectRef, Arc<Service>>,
    /// ExternalName Services: namespace/name → `spec.externalName`. Apart from `services`: they
    /// have no ClusterIP and nothing in the kernel; only the DNS proxy answers for them (CNAME).
    pub external_names: BTreeMap<ObjectRef, String>,
    pub endpoint_slices: BTreeMap<ObjectRef, Arc<EndpointSlice>>,
    pub pods: BTreeMap<ObjectRef, Pod>,
    pub namespaces: BTreeMap<ObjectRef, Namespace>,
    /// Nodes, for their locality (keyed like other cluster-scoped objects).
    pub nodes: BTreeMap<ObjectRef, crate::Node>,
    /// Istio objects, validated on their own; their hosts are resolved by `compile::l7`.
    pub virtual_services: BTreeMap<ObjectRef, crate::istio::VirtualService>,
    pub destination_rules: BTreeMap<ObjectRef, crate::istio::DestinationRule>,
    /// When the oldest change in this snapshot reached its source (the Kubernetes source sets
    /// it; the agent measures change → programmed latency from it). Not part of the cluster's
    /// state: sources compare snapshots before setting it.
    pub received: Option<std::time::Instant>,
    /// What changed since the source's previous snapshots, when it knows (`None`: unknown, as
    /// from the manifests source). Not part of the cluster's state, like `received`.
    pub changes: Option<crate::changes::Changes>,
    /// Lookups by Service, when the source keeps them in step with the maps above (the
    /// Kubernetes source does); `None`: readers scan. Not part of the cluster's state either.
    pub index: Option<crate::index::ModelIndex>,
}

/// EndpointSlices by the Service they serve, built once per compilation: asking the model per
/// Service scans every slice, which is quadratic (10 000 Services took seconds).
pub struct SliceIndex<'a> {
    /// namespace → Service name → slices.
    by_service: HashMap<&'a str, HashMap<&'a str, Vec<&'a EndpointSlice>>>,
}

impl<'a> SliceIndex<'a> {
    pub fn new(model: &'a ClusterModel) -> Self {
        let mut by_service: HashMap<&str, HashMap<&str, Vec<_>>> = HashMap::new();
        // The model's map is ordered by slice name, so each list is in name order too.
        for slice in model.endpoint_slices.values() {
            by_service
                .entry(slice.id.namespace.as_str())
                .or_default()
                .entry(slice.service_name.as_str())
                .or_default()
                .push(&**slice);
        }
        Self { by_service }
    }

    /// As [`SliceIndex::new`], for the slices of `services` only, for a change that touched a
    /// few Services: from the model's index when it has one, else one pass over the slices.
    pub fn for_services(
        model: &'a ClusterModel,
        services: &std::collections::BTreeSet<ObjectRef>,
    ) -> Self {
        let mut wanted: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
        for s in services {
            wanted
                .entry(s.namespace.as_str())
                .or_default()
                .insert(s.name.as_str());
        }
        let mut by_service: HashMap<&str, HashMap<&str, Vec<&EndpointSlice>>> = HashMap::new();
        if let Some(index) = &model.index {
            for s in services {
                let Some((service, ids)) = index.slices_of(s) else {
                    continue;
                };
                let slices = ids.filter_map(|id| model.endpoint_slices.get(id).map(|s| &**s));
                by_service
                    .entry(service.namespace.as_str())
                    .or_default()
                    .insert(service.name.as_str(), slices.collect());
            }
            return Self { by_service };
        }
        for slice in model.endpoint_slices.values() {
            let ns = slice.id.namespace.as_str();
            let svc = slice.service_name.as_str();
            if wanted.get(ns).is_some_and(|names| names.contains(svc)) {
                by_service
                    .entry(ns)
                    .or_default()
                    .entry(svc)
                    .or_default()
                    .push(&**slice);
            }
        }
        Self { by_service }
    }

    /// The EndpointSlices that serve `service`, in name order.
    pub fn slices_for(&self, service: &ObjectRef) -> impl Iterator<Item = &'a EndpointSlice> + '_ {
        let slices = self
            .by_service
            .get(service.namespace.as_str())
            .and_then(|names| names.get(service.name.as_str()))
            .map_or(&[][..], Vec::as_slice);
        slices.iter().copied()
    }
}
