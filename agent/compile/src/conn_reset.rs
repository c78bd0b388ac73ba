//! Which kernel-path TCP connections a change invalidates, as Istio's proxies drop theirs when
//! rules change: the connections a client already holds were balanced by the kernel at
//! `connect()` (their peer is the backend it chose), so after the change they would keep going
//! where the new rules no longer send them. Resetting them makes the client reconnect through
//! the current rules.
//!
//! - A frontend newly steered to the node proxy (it gained L7 rules): connections to its former
//!   backends (and to its own address, for sockets that were not translated) bypass the proxy.
//! - A backend no frontend on the kernel path balances to any more (it left its service, or the
//!   service went away) and that no EndpointSlice lists any more. A listed endpoint that is not
//!   ready (a failing readiness probe, a terminating pod) keeps its connections: Kubernetes
//!   lets a terminating pod finish the connections it has, and a pod leaves the slice only
//!   once it is gone.
//!
//! Ejection by outlier detection is no reason: Envoy does not close connections to an ejected
//! host either, it only stops picking it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use meshpath_model::{ClusterModel, Protocol};

use crate::{Compiled, FrontendAddr};

/// The peers whose connections to reset, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnResets {
    /// The former backends and address of frontends that became steered to the proxy.
    pub steered: BTreeSet<SocketAddrV4>,
    /// Backends no kernel-path frontend balances to any more.
    pub backend_removed: BTreeSet<SocketAddrV4>,
    /// Backends that left the kernel path but are still listed (not ready, terminating): reset
    /// once they are not, unless they come back. The next pass's `pending`.
    pub pending: BTreeSet<SocketAddrV4>,
}

impl ConnResets {
    /// Nothing to reset (whatever is pending).
    pub fn is_empty(&self) -> bool {
        self.steered.is_empty() && self.backend_removed.is_empty()
    }
}

/// The difference between what the kernel balanced (`before`, with the frontends steered to the
/// proxy then) and what it balances now; `listed` holds the addresses the EndpointSlices still
/// list ([`listed_ips`]) and `pending` the previous pass's [`ConnResets::pending`]. Nothing
/// at the first pass (`before` empty): the connections that
/// exist then were made under rules the agent does not know.
pub fn conn_resets(
    before: &Compiled,
    before_steered: &BTreeSet<FrontendAddr>,
    after: &Compiled,
    after_steered: &BTreeSet<FrontendAddr>,
    listed: &BTreeSet<Ipv4Addr>,
    pending: &BTreeSet<SocketAddrV4>,
) -> ConnResets {
    let mut out = ConnResets::default();
    for addr in after.frontends.keys() {
        if addr.protocol != Protocol::Tcp || !after_steered.contains(addr) {
            continue;
        }
        let Some(old) = before.frontends.get(addr) else {
            continue;
        };
        if before_steered.contains(addr) {
            continue;
        }
        out.steered.insert(SocketAddrV4::new(addr.ip, addr.port));
        out.steered.extend(
            old.backends
                .iter()
                .filter(|b| b.protocol == Protocol::Tcp)
                .map(|b| SocketAddrV4::new(b.ip, b.port)),
        );
    }
    let kernel_backends =
        |c: &Compiled, steered: &BTreeSet<FrontendAddr>| -> BTreeSet<SocketAddrV4> {
            c.frontends
                .iter()
                .filter(|(a, _)| a.protocol == Protocol::Tcp && !steered.contains(a))
                .flat_map(|(_, fe)| &fe.backends)
                .filter(|b| b.protocol == Protocol::Tcp)
                .map(|b| SocketAddrV4::new(b.ip, b.port))
                .collect()
        };
    let now = kernel_backends(after, after_steered);
    let left = kernel_backends(before, before_steered)
        .into_iter()
        .chain(pending.iter().copied())
        .filter(|b| !now.contains(b) && !out.steered.contains(b));
    for b in left {
        if listed.contains(b.ip()) {
            out.pending.insert(b);
        } else {
            out.backend_removed.insert(b);
        }
    }
    out
}

/// [`conn_resets`] for a per-Service pass (`incremental`), where nothing is steered to the
/// proxy: the TCP backends the changed services' frontends balanced to before (`old`), and
/// those pending, that no frontend balances to now (`now`: every backend with an id). The
/// backends of the other frontends are all still balanced to, so this is the full answer.
pub fn conn_resets_scoped<'a>(
    old: impl IntoIterator<Item = &'a crate::Frontend>,
    now: &std::collections::BTreeMap<crate::BackendAddr, u32>,
    model: &ClusterModel,
    pending: &BTreeSet<SocketAddrV4>,
) -> ConnResets {
    let tcp = |b: SocketAddrV4| crate::BackendAddr {
        ip: *b.ip(),
        port: b.port(),
        protocol: Protocol::Tcp,
    };
    let left: BTreeSet<SocketAddrV4> = old
        .into_iter()
        .flat_map(|fe| &fe.backends)
        .filter(|b| b.protocol == Protocol::Tcp)
        .map(|b| SocketAddrV4::new(b.ip, b.port))
        .chain(pending.iter().copied())
        .filter(|b| !now.contains_key(&tcp(*b)))
        .collect();
    let mut out = ConnResets::default();
    if left.is_empty() {
        return out;
    }
    // Only the few addresses that left are looked for: collecting every listed address (as
    // the full pass does) costs milliseconds at 10 000 Services. The model's index counts
    // them; without one, one pass over every endpoint.
    let wanted: BTreeSet<Ipv4Addr> = left.iter().map(|b| *b.ip()).collect();
    let listed: BTreeSet<Ipv4Addr> = match &model.index {
        Some(index) => wanted.into_iter().filter(|ip| index.lists(ip)).collect(),
        None => model
            .endpoint_slices
            .values()
            .flat_map(|s| &s.endpoints)
            .flat_map(|e| e.addresses.iter().copied())
            .filter(|ip| wanted.contains(ip))
            .collect(),
    };
    for b in left {
        if listed.contains(b.ip()) {
            out.pending.insert(b);
        } else {
            out.backend_removed.insert(b);
        }
    }
    out
}

/// Every endpoint address of every EndpointSlice, whatever its conditions.
pub fn listed_ips(model: &ClusterModel) -> BTreeSet<Ipv4Addr> {
    model
        .endpoint_slices
        .values()
        .flat_map(|s| &s.endpoints)
        .flat_map(|e| e.addresses.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendAddr, Frontend};

    fn fe_addr(last: u8) -> FrontendAddr {
        FrontendAddr {
            ip: Ipv4Addr::new(10, 96, 0, last),
            port: 8080,
            protocol: Protocol::Tcp,
        }
    }

    fn be(last: u8) -> BackendAddr {
        BackendAddr {
            ip: Ipv4Addr::new(10, 0, 0, last),
            port: 8080,
            protocol: Protocol::Tcp,
        }
    }

    fn none<T: Ord>() -> BTreeSet<T> {
        BTreeSet::new()
    }

    fn sa(b: BackendAddr) -> SocketAddrV4 {
        SocketAddrV4::new(b.ip, b.port)
    }

    fn compiled(frontends: &[(u8, &[u8])]) -> Compiled {
        let mut c = Compiled::default();
        for (i, (last, backends)) in frontends.iter().enumerate() {
            c.frontends.insert(
                fe_addr(*last),
                Frontend {
                    svc_id: i as u32 + 1,
                    service: meshpath_model::ObjectRef::new("default", format!("s{last}")),
                    port_name: None,
                    lb_policy: Default::default(),
                    affinity_timeout_sec: None,
                    max_connections: None,
                    lb_origin: Default::default(),
                    proxy: Default::default(),
                    backends: backends.iter().map(|b| be(*b)).collect(),
                },
            );
        }
        c
    }

    #[test]
    fn the_first_pass_resets_nothing() {
        let after = compiled(&[(1, &[1, 2])]);
        let steered = [fe_addr(1)].into();
        let r = conn_resets(
            &Compiled::default(),
            &none(),
            &after,
            &steered,
            &none(),
            &none(),
        );
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn a_newly_steered_frontend_resets_its_former_backends_and_address() {
        let c = compiled(&[(1, &[1, 2]), (2, &[3])]);
        let r = conn_resets(&c, &none(), &c, &[fe_addr(1)].into(), &none(), &none());
        let want: BTreeSet<_> =
            [sa(be(1)), sa(be(2)), SocketAddrV4::new(fe_addr(1).ip, 8080)].into();
        assert_eq!(r.steered, want);
        assert!(r.backend_removed.is_empty(), "{r:?}");
        // Already steered: nothing new.
        let steered = [fe_addr(1)].into();
        let again = conn_resets(&c, &steered, &c, &steered, &none(), &none());
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn a_backend_is_reset_only_when_no_kernel_path_frontend_keeps_it() {
        let before = compiled(&[(1, &[1, 2]), (2, &[2])]);
        let after = compiled(&[(1, &[1]), (2, &[2])]);
        // 2 left frontend 1 but frontend 2 still balances to it.
        assert!(conn_resets(&before, &none(), &after, &none(), &none(), &none()).is_empty());
        let after = compiled(&[(1, &[1])]);
        let r = conn_resets(&before, &none(), &after, &none(), &none(), &none());
        assert_eq!(r.backend_removed, [sa(be(2))].into());
        assert!(r.steered.is_empty());
        // Still listed (not ready, terminating): its connections may finish.
        let listed = [be(2).ip].into();
        let r = conn_resets(&before, &none(), &after, &none(), &listed, &none());
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(r.pending, [sa(be(2))].into());
        // Listed no more, one pass later: now it goes.
        let later = conn_resets(&after, &none(), &after, &none(), &none(), &r.pending);
        assert_eq!(later.backend_removed, [sa(be(2))].into());
        assert!(later.pending.is_empty());
        // Ready again instead: nothing to reset, nothing pending.
        let back = conn_resets(&after, &none(), &before, &none(), &listed, &r.pending);
        assert!(back.is_empty() && back.pending.is_empty(), "{back:?}");
    }
}
