//! The per-Service pass against the full one, over random sequences of changes fed through the
//! Kubernetes source's own aggregate (so its change sets are the ones under test too).
//!
//! `MESHPATH_PROPTEST_CASES` runs more sequences than the default (which keeps the normal test
//! run short), e.g. `MESHPATH_PROPTEST_CASES=2000 cargo test -p meshpath-compile incremental`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use meshpath_model::*;
use meshpath_source::kube::aggregate::{Aggregate, Change, Item};
use meshpath_source::{parse_file, ObjectKind, ParsedObject};
use proptest::prelude::*;

use super::*;
use crate::conn_reset::{conn_resets, conn_resets_scoped, ConnResets};
use crate::l7::{compile_l7, kernel_connection_limits, L7Compiled};
use crate::limits::{route_limits, RouteLimits};
use crate::{compile, lb};

const NAMESPACES: [&str; 2] = ["a", "b"];

#[derive(Clone, Debug)]
enum Op {
    Service {
        ns: usize,
        name: usize,
        /// 0: no ClusterIP (the agent allocates one); a small pool, so that Services collide.
        ip: u8,
        /// (port, UDP, named `http`, named targetPort)
        ports: Vec<(u16, bool, bool, bool)>,
        round_robin: bool,
        affinity: bool,
    },
    DeleteService(usize, usize),
    Slice {
        ns: usize,
        slice: usize,
        service: usize,
        /// 0: unnamed, 1: `http`, 2: `web` (the named targetPort)
        port_name: u8,
        port: u16,
        /// (address, 0 ready / 1 terminating / 2 not serving, pod)
        endpoints: Vec<(u8, u8, Option<usize>)>,
    },
    DeleteSlice(usize, usize),
    Pod(usize, usize, u16),
    DeletePod(usize, usize),
    /// 0: a DestinationRule for `service` (round robin, 5 connections), 1: a VirtualService
    /// splitting its TCP traffic with `other`.
    Istio(usize, usize, u8, usize),
    DeleteIstio(usize, usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let ns = 0..NAMESPACES.len();
    let port = prop::sample::select(vec![80u16, 443, 53]);
    let svc_port = (
        port.clone(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.2),
    );
    let endpoint = (0..12u8, 0..3u8, prop::option::of(0..3usize));
    prop_oneof![
        6 => (ns.clone(), 0..6usize, 0..8u8, prop::collection::vec(svc_port, 0..3), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(ns, name, ip, ports, round_robin, affinity)| Op::Service { ns, name, ip, ports, round_robin, affinity }),
        1 => (ns.clone(), 0..6usize).prop_map(|(n, s)| Op::DeleteService(n, s)),
        10 => (ns.clone(), 0..9usize, 0..6usize, 0..3u8, prop::sample::select(vec![8080u16, 9090]), prop::collection::vec(endpoint, 0..5))
            .prop_map(|(ns, slice, service, port_name, port, endpoints)| Op::Slice { ns, slice, service, port_name, port, endpoints }),
        2 => (ns.clone(), 0..9usize).prop_map(|(n, s)| Op::DeleteSlice(n, s)),
        2 => (ns.clone(), 0..3usize, prop::sample::select(vec![7070u16, 7171])).prop_map(|(n, p, port)| Op::Pod(n, p, port)),
        1 => (ns.clone(), 0..3usize).prop_map(|(n, p)| Op::DeletePod(n, p)),
        1 => (ns.clone(), 0..6usize, 0..2u8, 0..6usize).prop_map(|(n, s, k, o)| Op::Istio(n, s, k, o)),
        2 => (ns, 0..6usize, 0..2u8).prop_map(|(n, s, k)| Op::DeleteIstio(n, s, k)),
    ]
}

fn id(ns: usize, name: &str) -> ObjectRef {
    ObjectRef::new(NAMESPACES[ns], name)
}

/// The change `op` makes, as the source's watch task would report it.
fn change(op: &Op) -> (ObjectKind, Change) {
    let apply = |kind, object: ParsedObject| {
        let id = match &object {
            ParsedObject::Service(s) => s.id.clone(),
            ParsedObject::EndpointSlice(s) => s.id.clone(),
            ParsedObject::Pod(p) => p.id.clone(),
            ParsedObject::VirtualService(v) => v.id.clone(),
            ParsedObject::DestinationRule(d) => d.id.clone(),
            _ => unreachable!("not generated"),
        };
        let item = Item {
            id,
            result: Ok(Some(object)),
        };
        (kind, Change::Apply(item))
    };
    match op {
        Op::Service {
            ns,
            name,
            ip,
            ports,
            round_robin,
            affinity,
        } => apply(
            ObjectKind::Service,
            ParsedObject::Service(Service {
                id: id(*ns, &format!("s{name}")),
                cluster_ip: (*ip > 0).then(|| Ipv4Addr::new(10, 96, 0, *ip)),
                ports: ports
                    .iter()
                    .map(|&(port, udp, http, named)| ServicePort {
                        name: http.then(|| "http".to_owned()),
                        port,
                        target_port: if named {
                            TargetPort::Name("web".into())
                        } else {
                            TargetPort::Number(8080)
                        },
                        protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                        app_protocol: None,
                        node_port: None,
                    })
                    .collect(),
                selector: BTreeMap::new(),
                session_affinity: affinity.then_some(SessionAffinity {
                    timeout_seconds: 60,
                }),
                lb_policy: round_robin.then_some(LbPolicy::RoundRobin),
                labels: BTreeMap::new(),
                origin: None,
                external: Default::default(),
            }),
        ),
        Op::DeleteService(ns, name) => (
            ObjectKind::Service,
            Change::Delete(id(*ns, &format!("s{name}"))),
        ),
        Op::Slice {
            ns,
            slice,
            service,
            port_name,
            port,
            endpoints,
        } => apply(
            ObjectKind::EndpointSlice,
            ParsedObject::EndpointSlice(EndpointSlice {
                id: id(*ns, &format!("slice{slice}")),
                service_name: format!("s{service}"),
                ports: [TCP, UDP_]
                    .iter()
                    .map(|protocol| EndpointPort {
                        name: [None, Some("http"), Some("web")][*port_name as usize]
                            .map(str::to_owned),
                        port: *port,
                        protocol: *protocol,
                    })
                    .collect(),
                endpoints: endpoints
                    .iter()
                    .map(|&(addr, cond, pod)| Endpoint {
                        addresses: vec![Ipv4Addr::new(10, 1, 0, addr)],
                        conditions: EndpointConditions {
                            ready: cond == 0,
                            serving: cond < 2,
                            terminating: cond == 1,
                        },
                        pod_name: pod.map(|p| format!("p{p}")),
                        zone: None,
                        node_name: None,
                    })
                    .collect(),
            }),
        ),
        Op::DeleteSlice(ns, slice) => (
            ObjectKind::EndpointSlice,
            Change::Delete(id(*ns, &format!("slice{slice}"))),
        ),
        Op::Pod(ns, pod, port) => apply(
            ObjectKind::Pod,
            ParsedObject::Pod(Pod {
                id: id(*ns, &format!("p{pod}")),
                labels: BTreeMap::new(),
                ip: Some(Ipv4Addr::new(10, 1, 0, *pod as u8)),
                container_ports: vec![ContainerPort {
                    name: Some("web".into()),
                    port: *port,
                    protocol: Protocol::Tcp,
                }],
                placement: PodPlacement::default(),
                workload: format!("p{pod}"),
                trace_sampling_hundredths: None,
                socket_redirect: None,
            }),
        ),
        Op::DeletePod(ns, pod) => (ObjectKind::Pod, Change::Delete(id(*ns, &format!("p{pod}")))),
        Op::Istio(ns, service, kind, other) => {
            let ns_name = NAMESPACES[*ns];
            let yaml = if *kind == 0 {
                format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r{service}, namespace: {ns_name}}}\nspec:\n  host: s{service}\n  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}, connectionPool: {{tcp: {{maxConnections: 5}}}}}}\n")
            } else {
                format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v{service}, namespace: {ns_name}}}\nspec:\n  hosts: [s{service}]\n  tcp:\n  - route:\n    - {{destination: {{host: s{service}}}, weight: 30}}\n    - {{destination: {{host: s{other}}}, weight: 70}}\n")
            };
            let object = parse_file(Path::new("istio.yaml"), &yaml)
                .expect("valid")
                .remove(0);
            let kind = if *kind == 0 {
                ObjectKind::DestinationRule
            } else {
                ObjectKind::VirtualService
            };
            apply(kind, object)
        }
        Op::DeleteIstio(ns, service, kind) => match kind {
            0 => (
                ObjectKind::DestinationRule,
                Change::Delete(id(*ns, &format!("r{service}"))),
            ),
            _ => (
                ObjectKind::VirtualService,
                Change::Delete(id(*ns, &format!("v{service}"))),
            ),
        },
    }
}

const TCP: Protocol = Protocol::Tcp;
const UDP_: Protocol = Protocol::Udp;

/// The full pass as the agent ran it before the per-Service pass existed (no proxy, connection
/// limits on): every step, whether or not Istio objects are present.
#[derive(Default)]
struct Full {
    compiled: Compiled,
    l7: L7Compiled,
    limits: RouteLimits,
    /// Connection resets waiting for their endpoints to leave the slices.
    pending: BTreeSet<std::net::SocketAddrV4>,
}

impl Full {
    /// The map contents, whether the pass leaves a state the per-Service pass may continue, and
    /// the connections to reset.
    fn pass(&mut self, model: &ClusterModel, always_l7: bool) -> (MapContents, bool, ConnResets) {
        let opts = CompileOptions::default();
        let (mut next, errors) = compile(model, &opts, &self.compiled);
        let rules_present = !model.destination_rules.is_empty();
        let l7_needed = always_l7 || rules_present || !model.virtual_services.is_empty();
        let limits = match always_l7 || rules_present {
            true => kernel_connection_limits(model, &next),
            false => Default::default(),
        };
        for fe in next.frontends.values_mut() {
            fe.max_connections = limits.get(&fe.service).copied();
        }
        if always_l7 || rules_present {
            let rules = lb::rule_policies(model, &next);
            lb::apply_rules(&mut next, &rules);
        }
        let (l7, _) = if l7_needed {
            compile_l7(model, &next, &self.l7)
        } else {
            (L7Compiled::default(), Vec::new())
        };
        let (limits, _) = route_limits(&l7, &next, &self.limits);
        let wanted = lb::steer_reasons(&l7.config);
        lb::mark_proxy(&mut next, &wanted, &BTreeSet::new());
        let weighted = crate::tcp_weights::tcp_weights(&l7, &next, &Default::default());
        let none = crate::steer::FailClosed::None;
        let mut contents = next.map_contents_steered(&BTreeMap::new(), &weighted, &none);
        limits.render(&mut contents, &next, &weighted);
        let plain = model.virtual_services.is_empty()
            && model.destination_rules.is_empty()
            && errors.is_empty()
            && next.allocated_ips.is_empty()
            && weighted.is_empty()
            && limits.groups.is_empty();
        let none = BTreeSet::new();
        let listed = crate::conn_reset::listed_ips(model);
        let mut resets = conn_resets(&self.compiled, &none, &next, &none, &listed, &self.pending);
        self.pending = std::mem::take(&mut resets.pending);
        self.compiled = next;
        self.l7 = l7;
        self.limits = limits;
        (contents, plain, resets)
    }
}

/// The agent's way: the per-Service pass when it can, else the full one.
#[derive(Default)]
struct Agent {
    full: Full,
    applied: MapContents,
    scoped: Option<(u64, State)>,
    scoped_passes: usize,
}

impl Agent {
    fn pass(&mut self, model: &ClusterModel) -> ConnResets {
        let changes = model
            .changes
            .as_ref()
            .expect("the aggregate's snapshots say");
        let istio = !model.virtual_services.is_empty() || !model.destination_rules.is_empty();
        if let (Some((seq, ids)), false) = (self.scoped.as_mut(), istio) {
            if let Some(set) = changes.since(*seq).filter(|s| !s.everything) {
                let changed = touched_services(model, &set);
                let opts = CompileOptions::default();
                if let Ok(delta) =
                    compile_changed(model, &opts, &mut self.full.compiled, ids, &changed)
                {
                    let scoped = Scoped::new(&self.full.compiled, &self.applied, &delta);
                    written_only_for(&scoped, &delta);
                    scoped.patch(&mut self.applied);
                    *seq = changes.seq;
                    self.scoped_passes += 1;
                    let all = &self.full.compiled.backend_ids;
                    let mut resets =
                        conn_resets_scoped(delta.old.values(), all, model, &self.full.pending);
                    self.full.pending = std::mem::take(&mut resets.pending);
                    return resets;
                }
            }
        }
        let (contents, plain, resets) = self.full.pass(model, false);
        self.applied = contents;
        self.scoped = plain.then(|| (changes.seq, State::new(&self.full.compiled)));
        resets
    }
}

/// A scoped pass writes the entries of the touched frontends only.
fn written_only_for(scoped: &Scoped, delta: &Delta) {
    let bases: BTreeSet<_> = delta
        .old
        .keys()
        .chain(&delta.new)
        .map(crate::service_key)
        .collect();
    for key in scoped
        .desired
        .services
        .keys()
        .chain(scoped.previous.services.keys())
    {
        assert!(
            bases.contains(&key.with_slot(0)),
            "{key:?} is not a touched frontend's"
        );
    }
}

fn run(batches: &[(Vec<Op>, bool)]) -> Result<(), TestCaseError> {
    let mut aggregate = Aggregate::default();
    for kind in meshpath_source::kube::aggregate::KINDS {
        aggregate.apply(kind, Change::Init);
        aggregate.apply(kind, Change::InitDone);
    }
    let mut changes = Changes::default();
    let (mut reference, mut agent) = (Full::default(), Agent::default());
    for (i, (ops, skipped)) in batches.iter().enumerate() {
        for op in ops {
            let (kind, change) = change(op);
            aggregate.apply(kind, change);
        }
        changes = changes.next(aggregate.take_changes());
        // A snapshot the agent never saw (the channel keeps the newest only).
        if *skipped {
            continue;
        }
        let mut model = aggregate.model().clone();
        model.changes = Some(changes.clone());
        let (want, _, want_resets) = reference.pass(&model, true);
        let resets = agent.pass(&model);
        prop_assert_eq!(
            &agent.applied,
            &want,
            "map contents after batch {}: {:?}",
            i,
            ops
        );
        prop_assert_eq!(&resets, &want_resets, "connection resets after batch {}", i);
        prop_assert_eq!(&agent.full.pending, &reference.pending);
        prop_assert_eq!(
            &agent.full.compiled.frontends,
            &reference.compiled.frontends
        );
        prop_assert_eq!(
            &agent.full.compiled.backend_ids,
            &reference.compiled.backend_ids
        );
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("MESHPATH_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn per_service_passes_write_what_full_passes_write(
        batches in prop::collection::vec((prop::collection::vec(op(), 1..4), prop::bool::weighted(0.1)), 1..250)
    ) {
        run(&batches)?;
    }
}

#[test]
fn endpoint_changes_take_the_per_service_pass() {
    let slice = |endpoints: Vec<(u8, u8, Option<usize>)>| Op::Slice {
        ns: 0,
        slice: 0,
        service: 0,
        port_name: 1,
        port: 8080,
        endpoints,
    };
    let service = Op::Service {
        ns: 0,
        name: 0,
        ip: 1,
        ports: vec![(80, false, true, false)],
        round_robin: false,
        affinity: false,
    };
    let mut aggregate = Aggregate::default();
    for kind in meshpath_source::kube::aggregate::KINDS {
        aggregate.apply(kind, Change::Init);
        aggregate.apply(kind, Change::InitDone);
    }
    let mut changes = Changes::default();
    let mut agent = Agent::default();
    for ops in [
        vec![service, slice(vec![(1, 0, None)])],
        vec![slice(vec![(2, 0, None)])],
        vec![slice(vec![])],
    ] {
        for op in &ops {
            let (kind, change) = change(op);
            aggregate.apply(kind, change);
        }
        changes = changes.next(aggregate.take_changes());
        let mut model = aggregate.model().clone();
        model.changes = Some(changes.clone());
        agent.pass(&model);
    }
    assert_eq!(
        agent.scoped_passes, 2,
        "the first pass is full, the endpoint edits are not"
    );
    assert_eq!(agent.applied.services.len(), 1, "the header alone, no slot");
    assert!(agent.applied.backends.is_empty());
}
