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
    /// Even kinds are the DestinationRule `r<service>`, odd ones the VirtualService
    /// `v<service>`: 0: round robin, 5 connections; 1: its TCP traffic split with `other`;
    /// 2: least request (the proxy's), random on port 443; 3: an `http:` route to `other`;
    /// 4: round robin exported to its own namespace only (clients elsewhere see no rule);
    /// 5: a wildcard host routed to `other`; 6: 7 connections for every Service of the
    /// namespace (a wildcard host).
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
        3 => (ns.clone(), 0..6usize, prop::sample::select(vec![0u8, 0, 1, 1, 2, 3, 4, 5, 6]), 0..6usize).prop_map(|(n, s, k, o)| Op::Istio(n, s, k, o)),
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
                // Labels that change with the Pod: the proxy's clusters carry them.
                labels: BTreeMap::from([("version".to_owned(), format!("v{port}"))]),
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
            let host = match kind {
                6 => format!("\"*.{ns_name}.svc.cluster.local\""),
                _ => format!("s{service}"),
            };
            let dr = |spec: String| {
                format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r{service}, namespace: {ns_name}}}\nspec:\n  host: {host}\n{spec}")
            };
            let vs = |spec: String| {
                format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v{service}, namespace: {ns_name}}}\nspec:\n{spec}")
            };
            let yaml = match kind {
                0 => dr("  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}, connectionPool: {tcp: {maxConnections: 5}}}\n".into()),
                1 => vs(format!("  hosts: [s{service}]\n  tcp:\n  - route:\n    - {{destination: {{host: s{service}}}, weight: 30}}\n    - {{destination: {{host: s{other}}}, weight: 70}}\n")),
                2 => dr("  trafficPolicy:\n    loadBalancer: {simple: LEAST_REQUEST}\n    portLevelSettings:\n    - {port: {number: 443}, loadBalancer: {simple: RANDOM}}\n".into()),
                3 => vs(format!("  hosts: [s{service}]\n  http:\n  - route:\n    - destination: {{host: s{other}}}\n")),
                4 => dr("  exportTo: [\".\"]\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n".into()),
                6 => dr("  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}\n".into()),
                _ => vs(format!("  hosts: [\"*.{ns_name}.svc.cluster.local\"]\n  tcp:\n  - route:\n    - {{destination: {{host: s{other}}}}}\n")),
            };
            let object = parse_file(Path::new("istio.yaml"), &yaml)
                .expect("valid")
                .remove(0);
            let kind = if *kind % 2 == 0 {
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
        let plain = errors.is_empty() && next.allocated_ips.is_empty();
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
    scoped: Option<(u64, State, super::istio::IstioScope, super::l7::PodIps)>,
    scoped_passes: usize,
    /// As the agent with its node proxy: the routing table is compiled on every full pass and
    /// kept per Service by the per-Service one; the proxy takes every frontend that wants it.
    proxy: bool,
}

impl Agent {
    fn pass(&mut self, model: &ClusterModel) -> ConnResets {
        let changes = model
            .changes
            .as_ref()
            .expect("the aggregate's snapshots say");
        if let Some(resets) = self.scoped_pass(model, changes) {
            return resets;
        }
        let (contents, plain, resets) = self.full.pass(model, self.proxy);
        self.applied = contents;
        self.scoped = match (plain, super::istio::IstioScope::new(model)) {
            (true, Ok(rules)) => {
                let ids = State::new(&self.full.compiled, &CompileOptions::default());
                Some((changes.seq, ids, rules, super::l7::PodIps::new(model)))
            }
            _ => None,
        };
        resets
    }
}

impl Agent {
    /// The per-Service pass, or `None` when the full pass must run.
    fn scoped_pass(&mut self, model: &ClusterModel, changes: &Changes) -> Option<ConnResets> {
        let (seq, ids, rules, pod_ips) = self.scoped.as_mut()?;
        let set = changes.since(*seq).filter(|s| !s.everything)?;
        let mut changed = touched_services(model, &set);
        let compiled = &mut self.full.compiled;
        if self.proxy {
            changed.extend(super::l7::services_of_pods(
                model,
                compiled,
                ids,
                &self.full.l7.config,
                &set.pods,
                pod_ips,
            ));
        }
        rules.check(model, &changed).ok()?;
        let opts = CompileOptions::default();
        let plan = plan_changed(model, &opts, compiled, ids, &changed).ok()?;
        let patch = match self.proxy {
            true => {
                let wanted = lb::steer_reasons(&self.full.l7.config);
                let steered = |a: &FrontendAddr| wanted.contains_key(a);
                Some(
                    super::l7::plan_l7(
                        model,
                        compiled,
                        &plan,
                        &changed,
                        &self.full.l7,
                        steered,
                        false,
                    )
                    .ok()?,
                )
            }
            false => None,
        };
        let delta = plan.apply(compiled, ids, &changed);
        super::istio::apply_rules(model, compiled, &delta, true);
        if let Some(patch) = patch {
            patch.apply(&mut self.full.l7.config, &changed);
            pod_ips.update(model, &set.pods);
        }
        let scoped = Scoped::new(&self.full.compiled, &self.applied, &delta);
        written_only_for(&scoped, &delta);
        scoped.patch(&mut self.applied);
        *seq = changes.seq;
        self.scoped_passes += 1;
        let all = &self.full.compiled.backend_ids;
        let mut resets = conn_resets_scoped(delta.old.values(), all, model, &self.full.pending);
        self.full.pending = std::mem::take(&mut resets.pending);
        Some(resets)
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

fn run(batches: &[(Vec<Op>, bool)], proxy: bool) -> Result<(), TestCaseError> {
    let mut aggregate = Aggregate::default();
    for kind in meshpath_source::kube::aggregate::KINDS {
        aggregate.apply(kind, Change::Init);
        aggregate.apply(kind, Change::InitDone);
    }
    let mut changes = Changes::default();
    let (mut reference, mut agent) = (Full::default(), Agent::default());
    agent.proxy = proxy;
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
        if proxy {
            let (got, want) = (&agent.full.l7.config, &reference.l7.config);
            prop_assert_eq!(&got.listeners, &want.listeners, "routes after batch {}", i);
            prop_assert_eq!(&got.clusters, &want.clusters, "clusters after batch {}", i);
        }
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
        run(&batches, false)?;
    }

    #[test]
    fn per_service_passes_keep_the_proxy_table_full_passes_build(
        batches in prop::collection::vec((prop::collection::vec(op(), 1..4), prop::bool::weighted(0.1)), 1..250)
    ) {
        run(&batches, true)?;
    }
}

/// The agent after each batch of `batches`, in order.
fn agent_after(batches: Vec<Vec<Op>>) -> Agent {
    agent_with_proxy_after(false, batches)
}

fn agent_with_proxy_after(proxy: bool, batches: Vec<Vec<Op>>) -> Agent {
    let mut aggregate = Aggregate::default();
    for kind in meshpath_source::kube::aggregate::KINDS {
        aggregate.apply(kind, Change::Init);
        aggregate.apply(kind, Change::InitDone);
    }
    let mut changes = Changes::default();
    let mut agent = Agent {
        proxy,
        ..Agent::default()
    };
    for ops in batches {
        for op in &ops {
            let (kind, change) = change(op);
            aggregate.apply(kind, change);
        }
        changes = changes.next(aggregate.take_changes());
        let mut model = aggregate.model().clone();
        model.changes = Some(changes.clone());
        agent.pass(&model);
    }
    agent
}

fn slice(service: usize, endpoints: Vec<(u8, u8, Option<usize>)>) -> Op {
    Op::Slice {
        ns: 0,
        slice: service,
        service,
        port_name: 1,
        port: 8080,
        endpoints,
    }
}

fn http_service(name: usize, ip: u8) -> Op {
    Op::Service {
        ns: 0,
        name,
        ip,
        ports: vec![(80, false, true, false)],
        round_robin: false,
        affinity: false,
    }
}

#[test]
fn endpoint_changes_take_the_per_service_pass() {
    let agent = agent_after(vec![
        vec![http_service(0, 1), slice(0, vec![(1, 0, None)])],
        vec![slice(0, vec![(2, 0, None)])],
        vec![slice(0, vec![])],
    ]);
    assert_eq!(
        agent.scoped_passes, 2,
        "the first pass is full, the endpoint edits are not"
    );
    assert_eq!(agent.applied.services.len(), 1, "the header alone, no slot");
    assert!(agent.applied.backends.is_empty());
}

#[test]
fn with_the_proxy_endpoint_changes_take_the_per_service_pass() {
    let endpoints = |agent: &Agent| {
        let key = meshpath_model::l7::ClusterKey::new(id(0, "s0"), 80, None);
        agent.full.l7.config.clusters[&key].endpoints.len()
    };
    // s0's DestinationRule (a policy the kernel enforces) gives it entries in the table.
    let agent = agent_with_proxy_after(
        true,
        vec![
            vec![
                http_service(0, 1),
                slice(0, vec![(1, 0, None)]),
                Op::Istio(0, 0, 0, 0),
            ],
            vec![slice(0, vec![(1, 0, None), (2, 0, None)])],
            // A label of a Pod behind an endpoint: the cluster changes, the maps do not.
            vec![Op::Pod(0, 1, 7070)],
            vec![Op::Pod(0, 1, 7171)],
        ],
    );
    assert_eq!(agent.scoped_passes, 3);
    assert_eq!(endpoints(&agent), 2);
    let key = meshpath_model::l7::ClusterKey::new(id(0, "s0"), 80, None);
    let labels = &agent.full.l7.config.clusters[&key].endpoints[0].labels;
    assert_eq!(labels.get("version").map(String::as_str), Some("v7171"));

    // The Pod deleted: its labels leave the endpoint at its former address.
    let agent = agent_with_proxy_after(
        true,
        vec![
            vec![
                http_service(0, 1),
                slice(0, vec![(1, 0, None)]),
                Op::Istio(0, 0, 0, 0),
            ],
            vec![Op::Pod(0, 1, 7070)],
            vec![Op::DeletePod(0, 1)],
        ],
    );
    assert_eq!(agent.scoped_passes, 2);
    assert!(agent.full.l7.config.clusters[&key].endpoints[0]
        .labels
        .is_empty());
}

#[test]
fn with_the_proxy_a_service_no_istio_object_names_has_no_entry() {
    let agent = agent_with_proxy_after(
        true,
        vec![
            vec![http_service(0, 1), slice(0, vec![(1, 0, None)])],
            vec![slice(0, vec![(1, 0, None), (2, 0, None)])],
            vec![Op::Pod(0, 1, 7070)],
        ],
    );
    assert_eq!(agent.scoped_passes, 2);
    let table = &agent.full.l7.config;
    assert!(table.listeners.is_empty(), "{:?}", table.listeners);
    assert!(table.clusters.is_empty(), "{:?}", table.clusters);

    // Its last endpoint gone: a plain-forwarding entry (the 503 the proxy answers when the
    // port is steered), added by the per-Service pass without `--http-no-endpoint-503`.
    let agent = agent_with_proxy_after(
        true,
        vec![
            vec![http_service(0, 1), slice(0, vec![(1, 0, None)])],
            vec![slice(0, vec![])],
        ],
    );
    assert_eq!(agent.scoped_passes, 1);
    let vip = std::net::SocketAddr::from((Ipv4Addr::new(10, 96, 0, 1), 80));
    assert!(agent.full.l7.config.listeners.contains_key(&vip));
}

#[test]
fn the_proxy_taking_a_service_declines_the_per_service_pass() {
    // s0's rule balances by least request, which only the proxy does.
    let agent = agent_with_proxy_after(
        true,
        vec![
            vec![
                http_service(0, 1),
                http_service(1, 2),
                Op::Istio(0, 0, 2, 0),
            ],
            vec![slice(0, vec![(1, 0, None)])],
            vec![slice(1, vec![(2, 0, None)])],
        ],
    );
    assert_eq!(agent.scoped_passes, 1, "s1's change only");

    // With `--http-no-endpoint-503`, an HTTP port losing its last endpoint is steered.
    let mut model = ClusterModel::default();
    for op in [http_service(0, 1), slice(0, vec![])] {
        let (_, Change::Apply(item)) = change(&op) else {
            unreachable!()
        };
        match item.result.expect("valid").expect("an object") {
            ParsedObject::Service(s) => {
                model.services.insert(s.id.clone(), s.into());
            }
            ParsedObject::EndpointSlice(s) => {
                model.endpoint_slices.insert(s.id.clone(), s.into());
            }
            _ => unreachable!(),
        }
    }
    let (compiled, _) = compile(&model, &CompileOptions::default(), &Compiled::default());
    let state = State::new(&Compiled::default(), &CompileOptions::default());
    let changed = BTreeSet::from([id(0, "s0")]);
    let opts = CompileOptions::default();
    let plan = plan_changed(&model, &opts, &Compiled::default(), &state, &changed).expect("plan");
    assert_eq!(plan.fresh().len(), 1);
    let none = |_: &FrontendAddr| false;
    let empty = Compiled::default();
    // The same plan with and without the 503 for HTTP ports that have no endpoint.
    let plan_l7 = |http_no_endpoint_503| {
        super::l7::plan_l7(
            &model,
            &empty,
            &plan,
            &changed,
            &Default::default(),
            none,
            http_no_endpoint_503,
        )
    };
    let declined = plan_l7(true);
    assert!(
        matches!(declined, Err(Unscoped::Steered { port: 80, .. })),
        "{declined:?}"
    );
    assert!(plan_l7(false).is_ok());
    assert_eq!(compiled.frontends.len(), 1);
}

#[test]
fn unchanged_istio_objects_leave_other_services_to_the_per_service_pass() {
    let setup = vec![
        http_service(0, 1),
        http_service(1, 2),
        http_service(2, 3),
        // s1 split with s2; s0's rule balances by least request (the proxy's).
        Op::Istio(0, 1, 1, 2),
        Op::Istio(0, 0, 2, 0),
    ];
    let agent = agent_after(vec![
        setup.clone(),
        vec![slice(0, vec![(1, 0, None)])],
        vec![slice(0, vec![(1, 0, None), (2, 0, None)])],
    ]);
    assert_eq!(agent.scoped_passes, 2, "s0 is named by no VirtualService");
    let (_, fe) = agent
        .full
        .compiled
        .frontends
        .iter()
        .find(|(_, f)| f.service == id(0, "s0"))
        .expect("s0 compiled");
    assert_eq!(fe.lb_origin, lb::LbOrigin::Rule(lb::RuleLb::LeastRequest));
    assert_eq!(fe.proxy, lb::ProxyPart::Unavailable, "no proxy to steer to");
    assert_eq!(fe.backends.len(), 2);

    // A VirtualService names s2 (a destination) and s1 (a host): theirs take the full pass.
    let agent = agent_after(vec![
        setup.clone(),
        vec![slice(2, vec![(3, 0, None)])],
        vec![slice(1, vec![(4, 0, None)])],
    ]);
    assert_eq!(agent.scoped_passes, 0);
}

#[test]
fn a_destination_rule_edit_takes_the_per_service_pass() {
    let agent = agent_after(vec![
        vec![http_service(0, 1), http_service(1, 2)],
        // s0 gets a rule, which changes to another, then goes.
        vec![Op::Istio(0, 0, 0, 0)],
        vec![Op::Istio(0, 0, 2, 0)],
        vec![Op::DeleteIstio(0, 0, 0)],
    ]);
    assert_eq!(agent.scoped_passes, 3);
    let limits = |a: &Agent| a.applied.conn_limits.len();
    assert_eq!(limits(&agent), 0, "the rule and its limit are gone");
    let agent = agent_after(vec![
        vec![http_service(0, 1), http_service(1, 2)],
        vec![Op::Istio(0, 0, 0, 0)],
    ]);
    assert_eq!(agent.scoped_passes, 1);
    assert_eq!(limits(&agent), 1, "s0's 5 connections");
}

/// A one-Service change at 1 000 Services with VirtualServices and DestinationRules present:
/// what the full pass (compile, rules, L7 compile, render) and the per-Service pass take.
/// `cargo test -p meshpath-compile --release one_service_change_timing -- --ignored --nocapture`
#[test]
#[ignore = "a timing, not a check"]
#[allow(clippy::print_stdout)] // the timing is its output
fn one_service_change_timing() {
    let services = 1000;
    let mut setup = Vec::new();
    for s in 0..services {
        let svc = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: a}}\nspec:\n  clusterIP: 10.96.{}.{}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n", s / 250, s % 250 + 1);
        let mut slice = format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{s}-1, namespace: a, labels: {{kubernetes.io/service-name: svc-{s}}}}}\naddressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\nendpoints:\n");
        for e in 0..10u32 {
            let a = s * 10 + e + 1;
            slice += &format!(
                "- addresses: [\"10.{}.{}.{}\"]\n",
                128 + (a >> 16),
                (a >> 8) & 255,
                a & 255
            );
        }
        setup.push((ObjectKind::Service, svc));
        setup.push((ObjectKind::EndpointSlice, slice));
    }
    // 20 VirtualServices (TCP splits and HTTP routes) and 20 DestinationRules.
    for i in 0..20u32 {
        let vs = match i % 2 {
            0 => format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v{i}, namespace: a}}\nspec:\n  hosts: [svc-{i}]\n  tcp:\n  - route:\n    - {{destination: {{host: svc-{i}}}, weight: 30}}\n    - {{destination: {{host: svc-{}}}, weight: 70}}\n", i + 100),
            _ => format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v{i}, namespace: a}}\nspec:\n  hosts: [svc-{i}]\n  http:\n  - route:\n    - destination: {{host: svc-{}}}\n", i + 100),
        };
        let dr = format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r{i}, namespace: a}}\nspec:\n  host: svc-{}\n  trafficPolicy: {{loadBalancer: {{simple: {}}}, connectionPool: {{tcp: {{maxConnections: 50}}}}}}\n", 200 + i, if i % 2 == 0 { "ROUND_ROBIN" } else { "LEAST_REQUEST" });
        setup.push((ObjectKind::VirtualService, vs));
        setup.push((ObjectKind::DestinationRule, dr));
    }
    let mut aggregate = Aggregate::default();
    for kind in meshpath_source::kube::aggregate::KINDS {
        aggregate.apply(kind, Change::Init);
        aggregate.apply(kind, Change::InitDone);
    }
    let apply = |aggregate: &mut Aggregate, kind, yaml: &str| {
        let object = parse_file(Path::new("bench.yaml"), yaml)
            .expect("valid")
            .remove(0);
        let id = match &object {
            ParsedObject::Service(s) => s.id.clone(),
            ParsedObject::EndpointSlice(s) => s.id.clone(),
            ParsedObject::VirtualService(v) => v.id.clone(),
            ParsedObject::DestinationRule(d) => d.id.clone(),
            _ => unreachable!(),
        };
        aggregate.apply(
            kind,
            Change::Apply(meshpath_source::kube::aggregate::Item {
                id,
                result: Ok(Some(object)),
            }),
        );
    };
    for (kind, yaml) in &setup {
        apply(&mut aggregate, *kind, yaml);
    }
    let mut changes = Changes::default().next(aggregate.take_changes());
    let mut model = aggregate.model().clone();
    model.changes = Some(changes.clone());
    let mut agent = Agent::default();
    agent.pass(&model);
    let (mut full, mut scoped) = (Vec::new(), Vec::new());
    for round in 0..20u32 {
        // One endpoint of svc-500 moves.
        let s = 500;
        let slice = format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{s}-1, namespace: a, labels: {{kubernetes.io/service-name: svc-{s}}}}}\naddressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\nendpoints:\n- addresses: [\"10.250.0.{}\"]\n", round + 1);
        apply(&mut aggregate, ObjectKind::EndpointSlice, &slice);
        changes = changes.next(aggregate.take_changes());
        model = aggregate.model().clone();
        model.changes = Some(changes.clone());
        let mut reference = Full {
            compiled: agent.full.compiled.clone(),
            ..Full::default()
        };
        let t = std::time::Instant::now();
        reference.pass(&model, false);
        full.push(t.elapsed());
        let before = agent.scoped_passes;
        let t = std::time::Instant::now();
        agent.pass(&model);
        scoped.push(t.elapsed());
        assert_eq!(agent.scoped_passes, before + 1, "took the per-Service pass");
    }
    full.sort();
    scoped.sort();
    println!(
        "{services} Services, 20 VirtualServices, 20 DestinationRules, one Service's slice edited: full pass median {:?}, per-Service pass median {:?}",
        full[full.len() / 2],
        scoped[scoped.len() / 2]
    );
}

#[test]
fn routing_tables_share_the_clusters_a_change_left_alone() {
    let agent = agent_with_proxy_after(
        true,
        vec![vec![
            http_service(0, 1),
            http_service(1, 2),
            slice(0, vec![(1, 0, None)]),
            slice(1, vec![(2, 0, None)]),
            // Named by a DestinationRule each: they have entries in the table.
            Op::Istio(0, 0, 0, 0),
            Op::Istio(0, 1, 0, 0),
        ]],
    );
    let before = agent.full.l7.config.clone();
    let agent = {
        let mut agent = agent;
        // A full pass over a changed s0: s1's cluster is the previous allocation.
        let mut aggregate = Aggregate::default();
        for kind in meshpath_source::kube::aggregate::KINDS {
            aggregate.apply(kind, Change::Init);
            aggregate.apply(kind, Change::InitDone);
        }
        for op in [
            http_service(0, 1),
            http_service(1, 2),
            slice(0, vec![(3, 0, None)]),
            slice(1, vec![(2, 0, None)]),
            Op::Istio(0, 0, 0, 0),
            Op::Istio(0, 1, 0, 0),
        ] {
            let (kind, change) = change(&op);
            aggregate.apply(kind, change);
        }
        agent.full.pass(aggregate.model(), true);
        agent
    };
    let after = &agent.full.l7.config;
    let s = |name| meshpath_model::l7::ClusterKey::new(id(0, name), 80, None);
    assert!(std::sync::Arc::ptr_eq(
        &before.clusters[&s("s1")],
        &after.clusters[&s("s1")]
    ));
    assert!(!std::sync::Arc::ptr_eq(
        &before.clusters[&s("s0")],
        &after.clusters[&s("s0")]
    ));
    let vip = |ip| std::net::SocketAddr::from((Ipv4Addr::new(10, 96, 0, ip), 80));
    assert!(std::sync::Arc::ptr_eq(
        &before.listeners[&vip(2)],
        &after.listeners[&vip(2)]
    ));
    assert!(before.same_as(&before.clone()));
    assert!(!before.same_as(after));
}
