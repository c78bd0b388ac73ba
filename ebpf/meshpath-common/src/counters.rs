//! Counter indexes of the per-CPU `MP_COUNTERS` array and the per-service stats record.

/// Why a program did what it did. Each value indexes one slot of the per-CPU counters array;
/// every failure path in the eBPF programs bumps exactly one of them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// connect() to a frontend was rewritten to a backend.
    ConnectTranslated = 0,
    /// sendmsg() on an unconnected UDP socket was rewritten to a backend.
    SendmsgTranslated = 1,
    /// recvmsg() source shown as the frontend again.
    RecvmsgReversed = 2,
    /// getpeername() answered with the frontend.
    GetpeernameReversed = 3,
    /// A frontend with no ready backend: refused with ECONNREFUSED.
    NoBackend = 4,
    /// Slot 0 said N backends but a slot in 1..=N was absent (a concurrent update).
    SlotMissing = 5,
    /// A slot named a backend id absent from the backends map.
    BackendMissing = 6,
    /// The reverse translation entry could not be written (map full or error).
    RevNatUpdateFailed = 7,
    /// The affinity entry could not be written.
    AffinityUpdateFailed = 8,
    /// An existing, fresh affinity entry chose the backend.
    AffinityHit = 9,
    /// An affinity entry was found but had expired (a new backend was chosen).
    AffinityExpired = 10,
    /// The round-robin state slot for the service id was absent.
    RoundRobinStateMissing = 11,
    /// The per-service stats slot for the service id was absent.
    ServiceStatsMissing = 12,
    /// setting the ECONNREFUSED return value failed (kernel without bpf_set_retval).
    SetRetvalFailed = 13,
    /// sock_ops put an established socket into the redirection SOCKHASH.
    SockInserted = 14,
    /// ... and could not (map full, or an error).
    SockInsertFailed = 15,
    /// A socket in the SOCKHASH reached TCP_CLOSE (the kernel drops it from the map when its
    /// owner closes it; meshpath does not, see the sock_ops program).
    SockClosed = 16,
    /// sk_msg handed a message straight to the peer socket.
    MsgRedirected = 17,
    /// Bytes in those messages.
    MsgRedirectedBytes = 18,
    /// sk_msg found no peer socket (peer on another node or outside the managed cgroups, or
    /// not yet established): the message took the TCP path, and so will the rest of the stream.
    MsgFallbackNoPeer = 19,
    /// A message of a stream that once took the TCP path, kept on it to keep bytes in order.
    MsgFallbackSticky = 20,
    /// Redirection switched off at run time (`meshpath redirect off`): connection not inserted.
    SockRedirectDisabled = 21,
    /// A connect refused because its service had `maxConnections` active connections.
    ConnLimitRefused = 22,
    /// A connect admitted under a limit could not be tracked (table full): admitted uncounted.
    ConnTrackFull = 23,
    /// A tracked connection closed and its service's (or group's) active count went down.
    ConnReleased = 24,
    /// A connect refused because the route destination (VirtualService `tcp:` slot of a subset)
    /// it was balanced to had `maxConnections` active connections (per-group limit).
    ConnLimitSubsetRefused = 25,
    /// A slot or a tracked socket named a service or group id outside its array: not counted.
    ConnLimitIdInvalid = 26,
    /// A pod's DNS query (connect or sendmsg to a resolver the agent proxies, a frontend with
    /// `SVC_FLAG_DNS`) was steered to the agent's DNS listener. Counted on top of the
    /// translation reason.
    DnsSteered = 27,
    /// A translated TCP connection was established and counted in the TCP metrics.
    TcpMetricsOpened = 28,
    /// An established client socket had no reverse-translation entry (not a service connection,
    /// or the entry was evicted): not in the TCP metrics.
    TcpMetricsNoRevNat = 29,
    /// The live-connection table was full: the connection is not in the TCP metrics.
    TcpMetricsConnTableFull = 30,
    /// The workload-pair table was full: a connection's open, bytes or close were not counted.
    TcpMetricsFlowTableFull = 31,
    /// A counted connection closed and its bytes were added.
    TcpMetricsClosed = 32,
    /// Asking for the state callbacks of a counted connection failed: its close may be missed.
    TcpMetricsCbFlagsFailed = 33,
    /// A connect to a steered (L7) frontend found no proxy socket listening on its listener
    /// (agent restarting, proxy gone): balanced at L4 over the service's endpoints instead, so
    /// its L7 rules were not applied to that connection.
    ProxyFallback = 34,
    /// The same, for a frontend that fails closed: refused with ECONNREFUSED at once.
    ProxyDownRefused = 35,
    /// Asking for the state callback of a counted connection failed: its slot is released when
    /// its socket is released (`cgroup/sock_release`) rather than at TCP_CLOSE.
    ConnLimitCbFlagsFailed = 36,
    /// Asking for the state callback of a redirected socket failed: its fallback mark is not
    /// cleared at close (the LRU ages it out).
    RedirectCbFlagsFailed = 37,
    /// The mark that keeps a stream on the TCP path after one message took it could not be
    /// written: later messages of that stream may be redirected ahead of bytes still in flight.
    SockFallbackMarkFailed = 38,
    /// A counted connection's slot released when its socket was released, before sock_ops saw it
    /// reach TCP_CLOSE (connect failed before the SYN, closed in SYN_SENT, closed by its owner).
    ConnReleasedOnSockRelease = 39,
    /// An unconnected UDP socket's datagram went to the backend that socket already had.
    UdpStickyHit = 40,
    /// ... that socket had been idle past the stickiness timeout: a new backend was picked.
    UdpStickyExpired = 41,
    /// ... its backend had left the service: a new backend was picked.
    UdpStickyStale = 42,
    /// The stickiness entry could not be written: the next datagram picks afresh.
    UdpStickyUpdateFailed = 43,
    /// A session-affinity entry named a backend that had left the service: a new one was picked.
    AffinityStale = 44,
    /// A reverse-translation entry's frontend was gone or now belonged to another service: not
    /// applied (the application sees the backend's address) and deleted.
    RevNatStale = 45,
    /// An established socket not redirected: neither an opted-in pod's nor the proxy's.
    SockNotOptedIn = 46,
    /// The TCP socket iterator added a live connection's bytes since the last report.
    TcpMetricsSampled = 47,
    /// The iterator could not read a live connection's state or byte counters (offsets into
    /// the kernel's socket unknown, or the read failed): that sample was skipped.
    TcpMetricsSampleReadFailed = 48,
}

/// Number of [`Reason`] slots; the counters array has exactly this many entries.
pub const REASON_COUNT: u32 = 49;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::ConnectTranslated,
        Reason::SendmsgTranslated,
        Reason::RecvmsgReversed,
        Reason::GetpeernameReversed,
        Reason::NoBackend,
        Reason::SlotMissing,
        Reason::BackendMissing,
        Reason::RevNatUpdateFailed,
        Reason::AffinityUpdateFailed,
        Reason::AffinityHit,
        Reason::AffinityExpired,
        Reason::RoundRobinStateMissing,
        Reason::ServiceStatsMissing,
        Reason::SetRetvalFailed,
        Reason::SockInserted,
        Reason::SockInsertFailed,
        Reason::SockClosed,
        Reason::MsgRedirected,
        Reason::MsgRedirectedBytes,
        Reason::MsgFallbackNoPeer,
        Reason::MsgFallbackSticky,
        Reason::SockRedirectDisabled,
        Reason::ConnLimitRefused,
        Reason::ConnTrackFull,
        Reason::ConnReleased,
        Reason::ConnLimitSubsetRefused,
        Reason::ConnLimitIdInvalid,
        Reason::DnsSteered,
        Reason::TcpMetricsOpened,
        Reason::TcpMetricsNoRevNat,
        Reason::TcpMetricsConnTableFull,
        Reason::TcpMetricsFlowTableFull,
        Reason::TcpMetricsClosed,
        Reason::TcpMetricsCbFlagsFailed,
        Reason::ProxyFallback,
        Reason::ProxyDownRefused,
        Reason::ConnLimitCbFlagsFailed,
        Reason::RedirectCbFlagsFailed,
        Reason::SockFallbackMarkFailed,
        Reason::ConnReleasedOnSockRelease,
        Reason::UdpStickyHit,
        Reason::UdpStickyExpired,
        Reason::UdpStickyStale,
        Reason::UdpStickyUpdateFailed,
        Reason::AffinityStale,
        Reason::RevNatStale,
        Reason::SockNotOptedIn,
        Reason::TcpMetricsSampled,
        Reason::TcpMetricsSampleReadFailed,
    ];

    /// Stable snake_case name, used as a metric label and in `meshpath status`.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::ConnectTranslated => "connect_translated",
            Reason::SendmsgTranslated => "sendmsg_translated",
            Reason::RecvmsgReversed => "recvmsg_reversed",
            Reason::GetpeernameReversed => "getpeername_reversed",
            Reason::NoBackend => "no_backend",
            Reason::SlotMissing => "slot_missing",
            Reason::BackendMissing => "backend_missing",
            Reason::RevNatUpdateFailed => "revnat_update_failed",
            Reason::AffinityUpdateFailed => "affinity_update_failed",
            Reason::AffinityHit => "affinity_hit",
            Reason::AffinityExpired => "affinity_expired",
            Reason::RoundRobinStateMissing => "round_robin_state_missing",
            Reason::ServiceStatsMissing => "service_stats_missing",
            Reason::SetRetvalFailed => "set_retval_failed",
            Reason::SockInserted => "sock_inserted",
            Reason::SockInsertFailed => "sock_insert_failed",
            Reason::SockClosed => "sock_closed",
            Reason::MsgRedirected => "msg_redirected",
            Reason::MsgRedirectedBytes => "msg_redirected_bytes",
            Reason::MsgFallbackNoPeer => "msg_fallback_no_peer",
            Reason::MsgFallbackSticky => "msg_fallback_sticky",
            Reason::SockRedirectDisabled => "sock_redirect_disabled",
            Reason::ConnLimitRefused => "conn_limit_refused",
            Reason::ConnTrackFull => "conn_track_full",
            Reason::ConnReleased => "conn_released",
            Reason::ConnLimitSubsetRefused => "conn_limit_subset_refused",
            Reason::ConnLimitIdInvalid => "conn_limit_id_invalid",
            Reason::DnsSteered => "dns_steered",
            Reason::TcpMetricsOpened => "tcp_metrics_opened",
            Reason::TcpMetricsNoRevNat => "tcp_metrics_no_revnat",
            Reason::TcpMetricsConnTableFull => "tcp_metrics_conn_table_full",
            Reason::TcpMetricsFlowTableFull => "tcp_metrics_flow_table_full",
            Reason::TcpMetricsClosed => "tcp_metrics_closed",
            Reason::TcpMetricsCbFlagsFailed => "tcp_metrics_cb_flags_failed",
            Reason::ProxyFallback => "proxy_fallback",
            Reason::ProxyDownRefused => "proxy_down_refused",
            Reason::ConnLimitCbFlagsFailed => "conn_limit_cb_flags_failed",
            Reason::RedirectCbFlagsFailed => "redirect_cb_flags_failed",
            Reason::SockFallbackMarkFailed => "sock_fallback_mark_failed",
            Reason::ConnReleasedOnSockRelease => "conn_released_on_sock_release",
            Reason::UdpStickyHit => "udp_sticky_hit",
            Reason::UdpStickyExpired => "udp_sticky_expired",
            Reason::UdpStickyStale => "udp_sticky_stale",
            Reason::UdpStickyUpdateFailed => "udp_sticky_update_failed",
            Reason::AffinityStale => "affinity_stale",
            Reason::RevNatStale => "revnat_stale",
            Reason::SockNotOptedIn => "sock_not_opted_in",
            Reason::TcpMetricsSampled => "tcp_metrics_sampled",
            Reason::TcpMetricsSampleReadFailed => "tcp_metrics_sample_read_failed",
        }
    }

    /// Whether the reason is a failure (as opposed to a normal outcome).
    pub const fn is_failure(self) -> bool {
        !matches!(
            self,
            Reason::ConnectTranslated
                | Reason::SendmsgTranslated
                | Reason::RecvmsgReversed
                | Reason::GetpeernameReversed
                | Reason::AffinityHit
                | Reason::AffinityExpired
                | Reason::SockInserted
                | Reason::SockClosed
                | Reason::MsgRedirected
                | Reason::MsgRedirectedBytes
                | Reason::MsgFallbackNoPeer
                | Reason::MsgFallbackSticky
                | Reason::SockRedirectDisabled
                | Reason::ConnReleased
                | Reason::DnsSteered
                | Reason::TcpMetricsOpened
                | Reason::TcpMetricsNoRevNat
                | Reason::TcpMetricsClosed
                | Reason::ConnReleasedOnSockRelease
                | Reason::UdpStickyHit
                | Reason::UdpStickyExpired
                | Reason::UdpStickyStale
                | Reason::AffinityStale
                | Reason::RevNatStale
                | Reason::SockNotOptedIn
                | Reason::TcpMetricsSampled
        )
    }
}

/// Per-service, per-CPU counters, in an array indexed by service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceStats {
    /// Connects (TCP, connected UDP) translated to a backend.
    pub connects: u64,
    /// Unconnected UDP datagrams translated to a backend.
    pub datagrams: u64,
    /// Connects or datagrams refused because no backend was ready.
    pub no_backend: u64,
    /// Backend chosen by an existing affinity entry.
    pub affinity_hits: u64,
    /// Connects refused by the service's `maxConnections`.
    pub conn_limit_refused: u64,
}

const _: () = assert!(core::mem::size_of::<ServiceStats>() == 40);
const _: () = assert!(Reason::ALL.len() == REASON_COUNT as usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_once_in_index_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{}", r.name());
        }
    }
}
