//! `meshpath status`: what the datapath holds, read back from the pinned maps alone, so it works
//! while the agent runs and after it stopped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use meshpath_common::{
    ipv4_octets, port_host, ServiceKey, ServiceValue, PROTO_TCP, SVC_FLAG_AFFINITY, SVC_FLAG_DNS,
    SVC_FLAG_FAIL_CLOSED, SVC_FLAG_ROUND_ROBIN, SVC_FLAG_ROUTE_LIMITS, SVC_FLAG_STEERED,
};
use serde::Serialize;

use crate::{DatapathError, DatapathMaps};

mod explain;
pub use explain::PolicyStatus;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Status {
    pub pin_dir: String,
    pub services: Vec<ServiceStatus>,
    /// Connection-limit groups: route destinations (subsets of VirtualService `tcp:` routes)
    /// with their own `maxConnections`.
    pub limit_groups: Vec<GroupStatus>,
    /// Reason name → count summed over CPUs.
    pub counters: BTreeMap<&'static str, u64>,
    pub socket_redirect: RedirectStatus,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RedirectStatus {
    /// Whether new same-node connections are put in the SOCKHASH (`meshpath redirect on|off`).
    pub new_connections: bool,
    /// `opt-in` (opted-in pods and the node proxy only), `all`, or `off`.
    pub scope: &'static str,
    /// Pod addresses opted in (`meshpath.io/socket-redirect`), for the opt-in scope.
    pub opted_in_pods: usize,
    /// Sockets in the SOCKHASH now (both ends of each redirected connection).
    pub sockhash_entries: usize,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct GroupStatus {
    pub group_id: u32,
    /// Istio's cluster name, `outbound|<port>|<subset>|<host>`.
    pub name: String,
    pub max_connections: u32,
    pub active_connections: u64,
    pub refused: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    pub svc_id: u32,
    pub frontend: String,
    pub protocol: &'static str,
    /// What the kernel picks by when it balances the frontend.
    pub policy: &'static str,
    /// The load-balancing policy that applies, where it is enforced and why.
    pub lb: PolicyStatus,
    pub affinity_timeout_sec: Option<u32>,
    /// VirtualService `tcp:` slots: connects count against each slot's route destination
    /// (`limit_groups`, or a service's own limit), never this frontend's.
    pub route_limits: bool,
    pub backends: Vec<String>,
    pub connects: u64,
    pub datagrams: u64,
    pub no_backend: u64,
    pub affinity_hits: u64,
    /// Kernel connection limit (`maxConnections`), if any, and the connections it counts now.
    pub max_connections: Option<u32>,
    pub active_connections: u64,
    pub conn_limit_refused: u64,
    /// For a frontend steered to the node proxy: its listener, and whether a proxy socket
    /// listens there now (if not, connect4 balances at L4 over `backends`, or refuses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStatus>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ProxyStatus {
    pub listener: String,
    pub listening: bool,
    pub fail_closed: bool,
}

pub fn read(pin_dir: &Path) -> Result<Status, DatapathError> {
    from_maps(&DatapathMaps::open_pinned(pin_dir)?, pin_dir)
}

/// As [`read`], from handles kept open (a long-running reader such as the admin listener).
pub fn from_maps(maps: &DatapathMaps, pin_dir: &Path) -> Result<Status, DatapathError> {
    let map_err = |name| move |source| DatapathError::Map { name, source };
    let entries: BTreeMap<ServiceKey, ServiceValue> = maps
        .services
        .iter()
        .collect::<Result<_, _>>()
        .map_err(map_err(meshpath_common::MAP_SERVICES))?;
    let backends: BTreeMap<u32, meshpath_common::Backend> = maps
        .backends
        .iter()
        .collect::<Result<_, _>>()
        .map_err(map_err(meshpath_common::MAP_BACKENDS))?;
    let names: BTreeMap<u32, meshpath_common::ServiceName> = maps
        .names
        .iter()
        .collect::<Result<_, _>>()
        .map_err(map_err(meshpath_common::MAP_SVC_NAMES))?;

    // Pins of an agent older than the proxy sockhash have none: nothing listens, as far as
    // connect4 could tell.
    let listening = crate::proxy_socks::ProxySockets::open_pinned(pin_dir)
        .map(|p| p.listening())
        .unwrap_or_default();
    let mut services = Vec::new();
    for (key, header) in entries.iter().filter(|(k, _)| k.slot == 0) {
        let proxy = (header.flags & SVC_FLAG_STEERED != 0).then(|| {
            let l = backends.get(&header.backend_id);
            ProxyStatus {
                listener: l
                    .map(|b| {
                        SocketAddrV4::new(
                            Ipv4Addr::from(ipv4_octets(b.ip_be)),
                            port_host(b.port_be),
                        )
                        .to_string()
                    })
                    .unwrap_or_else(|| "<listener missing>".into()),
                listening: l.is_some_and(|b| listening.contains(b)),
                fail_closed: header.flags & SVC_FLAG_FAIL_CLOSED != 0,
            }
        });
        let backends = (1..=header.count)
            .map(|slot| {
                match entries
                    .get(&key.with_slot(slot))
                    .and_then(|v| backends.get(&v.backend_id))
                {
                    Some(b) => SocketAddrV4::new(
                        Ipv4Addr::from(ipv4_octets(b.ip_be)),
                        port_host(b.port_be),
                    )
                    .to_string(),
                    None if entries.get(&key.with_slot(slot)).is_some_and(|v| {
                        v.backend_id == meshpath_common::NO_ENDPOINT_BACKEND_ID
                    }) =>
                    {
                        "<no endpoint: refused>".to_string()
                    }
                    None => format!("<slot {slot} missing>"),
                }
            })
            .collect();
        let stats = maps.service_stats(header.svc_id)?;
        let policy = if header.flags & SVC_FLAG_ROUND_ROBIN != 0 {
            "round-robin"
        } else {
            "random"
        };
        services.push(ServiceStatus {
            name: names
                .get(&header.svc_id)
                .map(|n| n.as_str().to_string())
                .unwrap_or_else(|| "<unnamed>".into()),
            svc_id: header.svc_id,
            frontend: SocketAddrV4::new(
                Ipv4Addr::from(ipv4_octets(key.vip_be)),
                port_host(key.port_be),
            )
            .to_string(),
            protocol: if key.proto == PROTO_TCP { "TCP" } else { "UDP" },
            policy,
            lb: if header.flags & SVC_FLAG_DNS != 0 {
                explain::dns()
            } else {
                explain::explain(header.policy, policy)
            },
            affinity_timeout_sec: (header.flags & SVC_FLAG_AFFINITY != 0)
                .then_some(header.affinity_timeout_sec),
            route_limits: header.flags & SVC_FLAG_ROUTE_LIMITS != 0,
            backends,
            connects: stats.connects,
            datagrams: stats.datagrams,
            no_backend: stats.no_backend,
            affinity_hits: stats.affinity_hits,
            max_connections: match maps.conn_max.get(&header.svc_id, 0) {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(n),
            },
            active_connections: maps.conn_active.get(&header.svc_id, 0).unwrap_or(0),
            conn_limit_refused: stats.conn_limit_refused,
            proxy,
        });
    }
    services.sort_by(|a, b| (&a.name, &a.frontend).cmp(&(&b.name, &b.frontend)));
    let limit_groups = groups(maps)?;
    let mut counters: BTreeMap<&'static str, u64> = maps
        .reason_counts()?
        .into_iter()
        .map(|(r, n)| (r.name(), n))
        .collect();
    // The tc path's reasons (`tc_*`), when the pinned object has them.
    if let Some(tc) = &maps.tc {
        if let Ok(tc_counts) = tc.reason_counts() {
            counters.extend(tc_counts.into_iter().map(|(r, n)| (r.name(), n)));
        }
    }
    // The pod veths' reasons (`tc_veth_*`), likewise.
    if let Some(veth_counts) = crate::tc_veth::reason_counts(pin_dir) {
        counters.extend(veth_counts.into_iter().map(|(r, n)| (r.name(), n)));
    }
    let mode = maps
        .config
        .get(&meshpath_common::CONFIG_REDIRECT, 0)
        .map_err(map_err(meshpath_common::MAP_CONFIG))?;
    let socket_redirect = RedirectStatus {
        new_connections: mode & meshpath_common::REDIRECT_STATE_MASK
            == meshpath_common::REDIRECT_ON,
        scope: match mode {
            0 => "off",
            m if m & meshpath_common::REDIRECT_OPT_IN != 0 => "opt-in",
            _ => "all",
        },
        opted_in_pods: maps.redirect_pods.keys().filter(Result::is_ok).count(),
        sockhash_entries: maps.socks.keys().filter(Result::is_ok).count(),
    };
    Ok(Status {
        pin_dir: pin_dir.display().to_string(),
        services,
        limit_groups,
        counters,
        socket_redirect,
    })
}

fn groups(maps: &DatapathMaps) -> Result<Vec<GroupStatus>, DatapathError> {
    let names: BTreeMap<u32, meshpath_common::ServiceName> = maps
        .grp_names
        .iter()
        .collect::<Result<_, _>>()
        .map_err(|source| DatapathError::Map {
            name: meshpath_common::MAP_GRP_NAMES,
            source,
        })?;
    let mut out = Vec::with_capacity(names.len());
    for (id, name) in names {
        out.push(GroupStatus {
            group_id: id,
            name: name.as_str().to_string(),
            max_connections: maps.grp_max.get(&id, 0).unwrap_or(0),
            active_connections: maps.grp_active.get(&id, 0).unwrap_or(0),
            refused: maps.group_refused(id)?,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The human-readable form: one block per service, then the non-zero counters.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "meshpath status (maps pinned in {})", status.pin_dir);
    if status.services.is_empty() {
        let _ = writeln!(out, "no services programmed");
    }
    for s in &status.services {
        let affinity = match s.affinity_timeout_sec {
            Some(t) => format!(", affinity ClientIP {t}s"),
            None => String::new(),
        };
        // A frontend the proxy balances has one kernel backend, the proxy's listener.
        let policy = if s.lb.enforced == "proxy" {
            "via proxy"
        } else {
            s.policy
        };
        let _ = writeln!(
            out,
            "{} {}/{} [{policy}{affinity}] backends={} connects={} datagrams={} no_backend={} affinity_hits={}",
            s.name, s.frontend, s.protocol, s.backends.len(), s.connects, s.datagrams, s.no_backend, s.affinity_hits
        );
        let _ = writeln!(
            out,
            "    lb {} ({}): {}: {}",
            s.lb.name, s.lb.from, s.lb.enforced, s.lb.why
        );
        if let Some(max) = s.max_connections {
            let _ = writeln!(
                out,
                "    maxConnections {max}: {} active, {} refused",
                s.active_connections, s.conn_limit_refused
            );
        }
        if s.route_limits {
            let _ = writeln!(
                out,
                "    connection limits per route destination (see limit groups)"
            );
        }
        if let Some(p) = &s.proxy {
            let _ = writeln!(
                out,
                "    steered to the node proxy {} ({}; while it is not: {})",
                p.listener,
                if p.listening {
                    "listening"
                } else {
                    "NOT listening"
                },
                if p.fail_closed {
                    "refused"
                } else {
                    "L4 over the backends below"
                }
            );
        }
        for b in &s.backends {
            let _ = writeln!(out, "    -> {b}");
        }
    }
    if !status.limit_groups.is_empty() {
        let _ = writeln!(out, "limit groups (route destinations):");
    }
    for g in &status.limit_groups {
        let _ = writeln!(
            out,
            "    {} maxConnections {}: {} active, {} refused",
            g.name, g.max_connections, g.active_connections, g.refused
        );
    }
    let r = &status.socket_redirect;
    let _ = writeln!(
        out,
        "socket redirection ({}, {} pods opted in): {} for new connections, {} sockets in the sockhash",
        r.scope,
        r.opted_in_pods,
        if r.new_connections { "on" } else { "off" },
        r.sockhash_entries
    );
    let _ = writeln!(out, "counters:");
    let nonzero: Vec<_> = status.counters.iter().filter(|(_, n)| **n > 0).collect();
    if nonzero.is_empty() {
        let _ = writeln!(out, "    (all zero)");
    }
    for (name, n) in nonzero {
        let _ = writeln!(out, "    {name:<26} {n}");
    }
    out
}
