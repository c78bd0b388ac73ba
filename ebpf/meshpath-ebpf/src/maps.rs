//! The maps, all pinned by name so a restarted agent finds them and traffic keeps flowing.
//! Keys, values and capacities come from `meshpath-common`, shared with the agent.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, SockHash},
};
use meshpath_common::live::LIVE_SLOTS;

use crate::sk_storage::SkStorage;
use meshpath_common::{
    AffinityKey, AffinityValue, Backend, RevNatKey, RevNatValue, RoundRobinState, ServiceKey,
    ServiceName, ServiceStats, ServiceValue, SockKey, SockLimit, SvcBackendKey, TcpFlowKey,
    TcpFlowStats, TcpSock, UdpStickyKey, CONFIG_SLOTS, MAX_AFFINITY, MAX_BACKENDS,
    MAX_LIMIT_GROUPS, MAX_PROXY_SOCKS, MAX_REDIRECT_CGROUPS, MAX_REDIRECT_COOKIES,
    MAX_REDIRECT_PODS, MAX_REVNAT, MAX_SERVICE_ENTRIES, MAX_SERVICE_IDS, MAX_SLOT_LIMITS,
    MAX_SOCKS, MAX_SOCK_FALLBACK, MAX_SVC_BACKENDS, MAX_TCP_FLOWS, MAX_TRACKED_SOCKS,
    MAX_UDP_STICKY, REASON_COUNT, REDIRECT_PROXY_SLOTS,
};

/// For hash maps that only the agent writes, and rarely (per route limit, per opted-in pod,
/// per cgroup): their entries are allocated as the agent inserts them, so they take the
/// kernel memory of what the cluster has rather than of their whole capacity (a preallocated
/// hash map holds every entry from its creation). Lookups are the same. The maps written per
/// Service or per endpoint stay preallocated: allocating on each insert made the full pass at
/// 10 000 Services slower (bench-kube: with the services, backends and pairs maps so, the map
/// writes took 410 ms instead of 250, missing the 1 s sync target). Maps the programs insert
/// into stay preallocated (the tc path's counted flows excepted: see `tc::maps`).
pub const NO_PREALLOC: u32 = BPF_F_NO_PREALLOC as u32;

/// {vip, port, proto, slot} → slot 0: header; slots 1..=count: backend ids.
#[map]
pub static MP_SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(MAX_SERVICE_ENTRIES, 0);

/// backend id → address.
#[map]
pub static MP_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(MAX_BACKENDS, 0);

/// service id → round-robin cursor.
#[map]
pub static MP_RR: Array<RoundRobinState> = Array::pinned(MAX_SERVICE_IDS, 0);

/// {netns cookie, service id} → backend chosen for that client, for `sessionAffinity: ClientIP`.
#[map]
pub static MP_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(MAX_AFFINITY, 0);

/// UDP: {socket cookie, backend address} → the frontend the application asked for.
#[map]
pub static MP_REVNAT: LruHashMap<RevNatKey, RevNatValue> = LruHashMap::pinned(MAX_REVNAT, 0);

/// TCP: the translated socket's own state, reverse translation and TCP metrics (see `TcpSock`).
/// A BTF map (the kernel wants the key and value types of socket storage), so it lives in
/// `.maps`, not in aya's `maps` section.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "MP_TCP_SK")]
pub static MP_TCP_SK: SkStorage<TcpSock> = SkStorage::new();

/// Reason → count, per CPU.
#[map]
pub static MP_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(REASON_COUNT, 0);

/// service id → counters, per CPU.
#[map]
pub static MP_SVC_STATS: PerCpuArray<ServiceStats> = PerCpuArray::pinned(MAX_SERVICE_IDS, 0);

/// service id → "namespace/name:port", for `meshpath status`; no program reads it.
#[map]
pub static MP_SVC_NAMES: HashMap<u32, ServiceName> = HashMap::pinned(MAX_SERVICE_IDS, 0);

/// Both ends of every same-node connection in the managed cgroups, by their own 4-tuple.
#[map]
pub static MP_SOCKS: SockHash<SockKey> = SockHash::pinned(MAX_SOCKS, 0);

/// The node proxy's listening sockets by address (see `proxy.rs`). Written by the agent only.
#[map]
pub static MP_PROXY_SOCKS: SockHash<Backend> = SockHash::pinned(MAX_PROXY_SOCKS, 0);

/// Sockets one of whose messages took the TCP path: the rest of their stream must too.
#[map]
pub static MP_SOCK_FALLBK: LruHashMap<SockKey, u32> = LruHashMap::pinned(MAX_SOCK_FALLBACK, 0);

/// Run-time switches (see `meshpath_common::CONFIG_*`).
#[map]
pub static MP_CONFIG: Array<u32> = Array::pinned(CONFIG_SLOTS, 0);

/// service id → `connectionPool.tcp.maxConnections` (0: no limit). Written by the agent.
#[map]
pub static MP_CONN_MAX: Array<u32> = Array::pinned(MAX_SERVICE_IDS, 0);

/// service id → connections admitted and not yet closed. Written only by the programs.
#[map]
pub static MP_CONN_ACTIVE: Array<u64> = Array::pinned(MAX_SERVICE_IDS, 0);

/// socket cookie → the counter (service or group) it was counted against, to release at close.
#[map]
pub static MP_SOCK_LIMIT: HashMap<u64, SockLimit> = HashMap::pinned(MAX_TRACKED_SOCKS, 0);

/// {frontend, slot} → the counter that slot's connections count against, for frontends with
/// `SVC_FLAG_ROUTE_LIMITS` (VirtualService `tcp:` slots). No entry: unlimited.
#[map]
pub static MP_SLOT_GRP: HashMap<ServiceKey, SockLimit> =
    HashMap::pinned(MAX_SLOT_LIMITS, NO_PREALLOC);

/// group id → the route destination's `maxConnections` (0: no limit). Written by the agent.
#[map]
pub static MP_GRP_MAX: Array<u32> = Array::pinned(MAX_LIMIT_GROUPS, 0);

/// group id → connections admitted and not yet closed. Written only by the programs.
#[map]
pub static MP_GRP_ACTIVE: Array<u64> = Array::pinned(MAX_LIMIT_GROUPS, 0);

/// group id → connects refused by the group's limit, per CPU.
#[map]
pub static MP_GRP_REFUSED: PerCpuArray<u64> = PerCpuArray::pinned(MAX_LIMIT_GROUPS, 0);

/// group id → its name (`namespace/service:port subset`), for `meshpath status`; no program reads it.
#[map]
pub static MP_GRP_NAMES: HashMap<u32, ServiceName> = HashMap::pinned(MAX_LIMIT_GROUPS, NO_PREALLOC);

/// {client IP, frontend, backend} → TCP metrics of that pair's connections, per CPU.
#[map]
pub static MP_TCP_FLOWS: PerCpuHashMap<TcpFlowKey, TcpFlowStats> =
    PerCpuHashMap::pinned(MAX_TCP_FLOWS, 0);

/// {socket cookie, service id} → the backend an unconnected UDP socket's datagrams go to, and
/// when it last sent one (see `meshpath_common::sticky`).
#[map]
pub static MP_UDP_STICKY: LruHashMap<UdpStickyKey, AffinityValue> =
    LruHashMap::pinned(MAX_UDP_STICKY, 0);

/// {service id, backend id} pairs the service's slots name, written by the agent: what a
/// remembered choice (affinity, UDP stickiness) is checked against before it is used.
#[map]
pub static MP_SVC_BACKENDS: HashMap<SvcBackendKey, u8> = HashMap::pinned(MAX_SVC_BACKENDS, 0);
/// Opted-in pod IPs (network order) → 1: their sockets may be redirected (opt-in scope).
#[map]
pub static MP_REDIR_PODS: HashMap<u32, u32> = HashMap::pinned(MAX_REDIRECT_PODS, NO_PREALLOC);

/// cgroup id → 1: sockets connecting from it may be redirected (the node proxy's).
#[map]
pub static MP_REDIR_CGRP: HashMap<u64, u32> = HashMap::pinned(MAX_REDIRECT_CGROUPS, NO_PREALLOC);

/// Socket cookies connect4 saw connecting from an `MP_REDIR_CGRP` cgroup, until established.
#[map]
pub static MP_REDIR_COOK: LruHashMap<u64, u32> = LruHashMap::pinned(MAX_REDIRECT_COOKIES, 0);

/// The node proxy's listener address range (see `meshpath_common::MAP_REDIRECT_PROXY`).
#[map]
pub static MP_REDIR_PROXY: Array<u32> = Array::pinned(REDIRECT_PROXY_SLOTS, 0);

/// Upper bounds of the entries of `MP_SOCK_LIMIT` and `MP_SOCK_FALLBK` (see `live.rs`).
#[map]
pub static MP_LIVE: Array<u64> = Array::pinned(LIVE_SLOTS, 0);
