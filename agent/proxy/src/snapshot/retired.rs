//! Listeners a config dropped, kept for the connections that may still ask for them.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshpath_model::l7::L7Config;

use super::{ListenerRt, Snapshot};
use crate::istio_series::WordHasher;

/// How long a dropped listener keeps serving connections that never used it (the default of
/// `ProxyOptions::retired_listener_grace`): the agent writes the kernel's maps right after it
/// publishes a table, so milliseconds would do for new ones; this also covers a connection
/// accepted then and idle for a while before its first request.
pub(crate) const RETIRED_GRACE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub(crate) struct Retired {
    pub listener: Arc<ListenerRt>,
    pub since: std::time::Instant,
}

/// `previous`'s listeners that `config` drops, and those it had retired less than `grace` ago
/// and `config` still does not define.
pub(super) fn retire(
    previous: &Snapshot,
    config: &L7Config,
    now: std::time::Instant,
    grace: Duration,
) -> HashMap<SocketAddr, Retired, BuildHasherDefault<WordHasher>> {
    let mut out: HashMap<SocketAddr, Retired, BuildHasherDefault<WordHasher>> = previous
        .retired
        .iter()
        .filter(|(addr, r)| {
            !config.listeners.contains_key(*addr) && now.duration_since(r.since) < grace
        })
        .map(|(addr, r)| (*addr, r.clone()))
        .collect();
    for (addr, listener) in &previous.listeners {
        if !config.listeners.contains_key(addr) {
            let listener = listener.clone();
            out.insert(
                *addr,
                Retired {
                    listener,
                    since: now,
                },
            );
        }
    }
    out
}
