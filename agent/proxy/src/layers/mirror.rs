//! Mirroring (Istio `mirror` and `mirrors`): each mirror at its own percentage, a copy of the
//! request goes to its cluster with `-shadow` appended to the host, fire and forget
//! (`mirror.rs` sends it).
//! Rolled before the request body is read, because a mirrored body must be buffered so the
//! copy can carry it; a body too large to buffer, or a mirror cluster the config does not
//! define, means no copy. Upgrades (WebSocket) are never mirrored.

use std::time::Duration;

use http::header::HeaderValue;
use http::request::Parts;
use tracing::debug;

use super::super::forward::ReqBody;
use super::super::mirror::spawn_shadow;
use super::super::snapshot::{cluster_name, Dest, RouteRt};
use super::super::upstream::Proto;
use super::super::Proxy;
use super::roll;

/// A request chosen for mirroring, and where its copy goes.
pub(crate) struct Mirror<'r> {
    dest: &'r Dest,
}

/// Decides, once per request, which mirrors get a copy (no allocation when none does).
pub(crate) fn roll_for(route: &RouteRt, upgrade: bool) -> Vec<Mirror<'_>> {
    if upgrade {
        return Vec::new();
    }
    route
        .mirrors
        .iter()
        .filter(|(_, pct)| roll(*pct))
        .map(|(dest, _)| Mirror { dest })
        .collect()
}

impl Mirror<'_> {
    /// Sends the copy (`head` and `authority` as the primary request has them); whether one
    /// was sent. The client never waits for it.
    #[allow(clippy::too_many_arguments)] // the primary request's parts, as the handler holds them
    pub(crate) fn send(
        self,
        proxy: &Proxy,
        head: &Parts,
        authority: &HeaderValue,
        body: &ReqBody,
        hash: Option<u64>,
        proto: Proto,
        timeout: Option<Duration>,
    ) -> bool {
        match (self.dest.cluster.clone(), body.replay_bytes()) {
            (Some(cluster), Some(bytes)) => {
                spawn_shadow(proxy, cluster, head, authority, bytes, hash, proto, timeout);
                true
            }
            _ => {
                debug!(cluster = %cluster_name(&self.dest.key), "request not mirrored: cluster unknown or body too large to copy");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{Method, Request};
    use tokio::sync::watch;

    use super::super::super::tests::{backend, cluster, config, key, route, to, VIP};
    use super::super::testing::{eventually, snapshot_of};
    use super::*;
    use meshpath_model::l7::{L7Config, LoadBalancer, Mirror as MirrorPolicy};

    fn mirrored(
        pct: f64,
        primary: std::net::SocketAddr,
        shadow: Option<std::net::SocketAddr>,
    ) -> L7Config {
        let mut r = route(vec![], to(&key("a")));
        r.mirrors = vec![MirrorPolicy {
            cluster: key("m"),
            percentage: pct,
        }];
        let mut clusters = vec![(key("a"), cluster(&[primary], LoadBalancer::RoundRobin))];
        if let Some(s) = shadow {
            clusters.push((key("m"), cluster(&[s], LoadBalancer::RoundRobin)));
        }
        config(vec![r], clusters)
    }

    fn proxy(cfg: &L7Config) -> Arc<Proxy> {
        Proxy::new(watch::channel(Arc::new(cfg.clone())).1)
    }

    fn head() -> (Parts, HeaderValue) {
        let (parts, ()) = Request::builder()
            .method(Method::POST)
            .uri("/orders?id=7")
            .header("host", "svc.default")
            .header("x-trace", "t1")
            .body(())
            .unwrap()
            .into_parts();
        (parts, HeaderValue::from_static("svc.default"))
    }

    #[tokio::test]
    async fn sends_a_shadow_copy_with_the_body() {
        let (primary, shadow) = (backend("a").await, backend("m").await);
        let cfg = mirrored(100.0, primary.addr, Some(shadow.addr));
        let (snap, _) = snapshot_of(cfg.clone());
        let r = &snap.listeners[&VIP].routes[0];
        let (head, authority) = head();
        let body = ReqBody::Replay(Some(Bytes::from_static(b"payload")));
        let m = roll_for(r, false).pop().expect("100% mirrored");
        assert!(m.send(
            &proxy(&cfg),
            &head,
            &authority,
            &body,
            None,
            Proto::Http1,
            None
        ));
        assert!(eventually(|| shadow.count() == 1).await, "the copy arrived");
        let seen = shadow.last();
        assert_eq!(seen.host(), "svc.default-shadow");
        assert_eq!(seen.uri, "/orders?id=7");
        assert_eq!(seen.header("x-trace"), Some("t1"));
        assert_eq!(seen.body, "payload");
        assert_eq!(primary.count(), 0, "the layer sends only the copy");
    }

    #[tokio::test]
    async fn no_copy_to_an_undefined_cluster() {
        let primary = backend("a").await;
        let cfg = mirrored(100.0, primary.addr, None);
        let (snap, _) = snapshot_of(cfg.clone());
        let r = &snap.listeners[&VIP].routes[0];
        let (head, authority) = head();
        let m = roll_for(r, false).pop().expect("rolled");
        let body = ReqBody::Replay(None);
        assert!(!m.send(
            &proxy(&cfg),
            &head,
            &authority,
            &body,
            None,
            Proto::Http1,
            None
        ));
    }

    #[test]
    fn mirrors_at_its_percentage_and_never_upgrades() {
        let a: std::net::SocketAddr = "127.0.0.1:23000".parse().unwrap();
        let (snap, _) = snapshot_of(mirrored(25.0, a, Some(a)));
        let r = &snap.listeners[&VIP].routes[0];
        let hits = (0..8000).filter(|_| !roll_for(r, false).is_empty()).count();
        // Binomial(8000, 0.25): sd ≈ 39; ±5 sd.
        assert!((1805..=2195).contains(&hits), "{hits} of 8000 at 25%");
        let (snap, _) = snapshot_of(mirrored(100.0, a, Some(a)));
        let r = &snap.listeners[&VIP].routes[0];
        assert!((0..100).all(|_| roll_for(r, true).is_empty()));
        // A 0% mirror is dropped when the route is compiled.
        let (snap, _) = snapshot_of(mirrored(0.0, a, Some(a)));
        assert!(roll_for(&snap.listeners[&VIP].routes[0], false).is_empty());
    }

    #[test]
    fn several_mirrors_each_roll_at_their_own_percentage() {
        let a: std::net::SocketAddr = "127.0.0.1:23000".parse().unwrap();
        let mut cfg = mirrored(100.0, a, Some(a));
        let mut r = cfg.listeners.values().next().unwrap().http[0].clone();
        r.mirrors.push(MirrorPolicy {
            cluster: key("n"),
            percentage: 30.0,
        });
        std::sync::Arc::make_mut(cfg.listeners.values_mut().next().unwrap()).http[0] = r;
        let (snap, _) = snapshot_of(cfg);
        let r = &snap.listeners[&VIP].routes[0];
        let mut to_n = 0;
        for _ in 0..4000 {
            let rolled = roll_for(r, false);
            assert!(rolled.iter().any(|m| m.dest.key == key("m")), "100% always");
            to_n += rolled.iter().filter(|m| m.dest.key == key("n")).count();
        }
        // Binomial(4000, 0.3): sd ≈ 29; ±5 sd.
        assert!((1055..=1345).contains(&to_n), "{to_n} of 4000 at 30%");
    }
}
