//! Routing: the listener for the connection's original destination, then its first route
//! with a matching `match` (routes in order, a route's matches OR'ed), then the route's
//! destination drawn by weight. What Envoy/Istio do where the config has nothing:
//! - no original destination, or routes that all miss: 404 (Envoy's "no route");
//! - no listener for the destination: passthrough to it (Istio's `PassthroughCluster`), unless
//!   it is the proxy's own address, which would loop (404);
//! - a listener without routes: its default route, everything to `default_cluster`;
//! - routes not exported to the client's namespace (`exportTo`): the next VirtualService's
//!   exported to it, else the default route;
//! - a destination the config does not define: 503 (Envoy's cluster not found).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;
use http::request::Parts;

use super::super::forward::Target;
use super::super::matching::{Matcher, RequestView};
use super::super::snapshot::{Dest, ListenerRt, RouteRt, Snapshot};
use super::super::upstream::Endpoint;
use super::Reply;
use meshpath_model::l7::LoadBalancer;

/// Where routing sends a request.
pub(crate) enum Selected<'s> {
    /// No L7 config for the original destination: straight there.
    Passthrough(SocketAddr),
    /// A route, and which of its matches matched (`None` for a route without matches).
    Route {
        route: &'s RouteRt,
        matcher: Option<&'s Matcher>,
        /// The original destination (a `Passthrough` policy sends there).
        original_dst: SocketAddr,
    },
}

/// Who sent the request: the calling pod's labels (`sourceLabels`) and namespace (`exportTo`).
pub(crate) struct Client<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub namespace: Option<&'a str>,
}

/// The route for a request to `original_dst` that reached the proxy at `local`; `dropped` is
/// the listener that serves it (plain forwarding) when `snap` has none there any more.
pub(crate) fn select<'s>(
    snap: &'s Snapshot,
    dropped: Option<&'s ListenerRt>,
    original_dst: Option<SocketAddr>,
    local: SocketAddr,
    client: &Client<'_>,
    head: &Parts,
    authority: &HeaderValue,
) -> Result<Selected<'s>, Reply> {
    let source_labels = client.labels;
    let Some(orig) = original_dst else {
        return Err(Reply::NoRoute);
    };
    let Some(listener) = snap.listeners.get(&orig) else {
        if let Some(dropped) = dropped {
            return Ok(Selected::Route {
                route: dropped.plain(client.namespace),
                matcher: None,
                original_dst: orig,
            });
        }
        if orig == local {
            return Err(Reply::NoRoute);
        }
        return Ok(Selected::Passthrough(orig));
    };
    let listener = listener.for_client(client.namespace);
    if listener.routes.is_empty() {
        return Ok(Selected::Route {
            route: &listener.default_route,
            matcher: None,
            original_dst: orig,
        });
    }
    let view = RequestView {
        path: head.uri.path(),
        query: head.uri.query(),
        method: head.method.as_str(),
        authority: std::str::from_utf8(authority.as_bytes()).unwrap_or(""),
        scheme: head.uri.scheme_str().unwrap_or("http"),
        headers: &head.headers,
        source_labels,
    };
    listener
        .routes
        .iter()
        .find_map(|route| {
            if route.matchers.is_empty() {
                return Some(Selected::Route {
                    route,
                    matcher: None,
                    original_dst: orig,
                });
            }
            route
                .matchers
                .iter()
                .find(|m| m.matches(&view))
                .map(|m| Selected::Route {
                    route,
                    matcher: Some(m),
                    original_dst: orig,
                })
        })
        .ok_or(Reply::NoRoute)
}

/// The route's destination, drawn by weight.
pub(crate) fn destination(route: &RouteRt) -> Result<&Dest, Reply> {
    route.choose().ok_or(Reply::ClusterNotFound)
}

/// Where the attempts for `dest` go: its cluster, or under a `Passthrough` load balancer the
/// connection's original destination (`original`, asked only then).
pub(crate) fn target(
    dest: &Dest,
    original: impl FnOnce() -> Arc<Endpoint>,
) -> Result<Target, Reply> {
    let Some(cluster) = dest.cluster.clone() else {
        return Err(Reply::ClusterNotFound);
    };
    Ok(match cluster.policy.load_balancer {
        LoadBalancer::Passthrough => Target::Passthrough(original(), cluster.connect_timeout),
        _ => Target::Cluster(cluster),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Request;

    use super::super::super::tests::{cluster, config, exact, key, prefix, route, to, VIP};
    use super::super::testing::snapshot_of;
    use super::*;
    use meshpath_model::l7::{HttpMatch, RouteAction, WeightedCluster};

    fn local() -> SocketAddr {
        "127.0.0.1:15001".parse().unwrap()
    }

    fn backend() -> SocketAddr {
        "127.0.0.1:24000".parse().unwrap()
    }

    fn req(path: &str) -> (Parts, HeaderValue) {
        let (parts, ()) = Request::get(path)
            .header("host", "svc.default")
            .body(())
            .unwrap()
            .into_parts();
        (parts, HeaderValue::from_static("svc.default"))
    }

    fn uri(m: meshpath_model::l7::StringMatch) -> HttpMatch {
        HttpMatch {
            uri: Some(m),
            ..HttpMatch::default()
        }
    }

    /// The selected route's first destination, and the index of its matcher.
    fn selected(
        snap: &Snapshot,
        path: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(String, Option<usize>), Reply> {
        let (head, authority) = req(path);
        let client = Client {
            labels,
            namespace: None,
        };
        match select(snap, None, Some(VIP), local(), &client, &head, &authority)? {
            Selected::Passthrough(a) => Ok((format!("passthrough {a}"), None)),
            Selected::Route { route, matcher, .. } => Ok((
                route.dests[0].0.key.service.name.clone(),
                matcher.map(|m| {
                    route
                        .matchers
                        .iter()
                        .position(|x| std::ptr::eq(x, m))
                        .unwrap()
                }),
            )),
        }
    }

    fn clusters(
        names: &[&str],
    ) -> Vec<(meshpath_model::l7::ClusterKey, meshpath_model::l7::Cluster)> {
        names
            .iter()
            .map(|n| (key(n), cluster(&[backend()], LoadBalancer::RoundRobin)))
            .collect()
    }

    #[test]
    fn first_matching_route_wins_and_its_matching_match_is_returned() {
        let (snap, _) = snapshot_of(config(
            vec![
                route(vec![uri(exact("/x")), uri(prefix("/api"))], to(&key("api"))),
                route(vec![uri(prefix("/api/v2"))], to(&key("never"))),
                route(vec![], to(&key("rest"))),
            ],
            clusters(&["api", "never", "rest"]),
        ));
        let none = BTreeMap::new();
        assert_eq!(selected(&snap, "/x", &none), Ok(("api".into(), Some(0))));
        assert_eq!(
            selected(&snap, "/api/v2/a", &none),
            Ok(("api".into(), Some(1)))
        );
        assert_eq!(selected(&snap, "/other", &none), Ok(("rest".into(), None)));
    }

    #[test]
    fn routes_that_all_miss_are_no_route() {
        let labelled = HttpMatch {
            source_labels: [("app".to_owned(), "web".to_owned())].into(),
            ..HttpMatch::default()
        };
        let (snap, _) = snapshot_of(config(
            vec![
                route(vec![uri(prefix("/a"))], to(&key("a"))),
                route(vec![labelled], to(&key("web"))),
            ],
            clusters(&["a", "web"]),
        ));
        assert_eq!(selected(&snap, "/b", &BTreeMap::new()), Err(Reply::NoRoute));
        let web = [("app".to_owned(), "web".to_owned())].into();
        assert_eq!(selected(&snap, "/b", &web), Ok(("web".into(), Some(0))));
    }

    #[test]
    fn a_listener_without_routes_uses_its_default_cluster() {
        let (snap, _) = snapshot_of(config(vec![], clusters(&["svc"])));
        assert_eq!(
            selected(&snap, "/anything", &BTreeMap::new()),
            Ok(("svc".into(), None))
        );
    }

    #[test]
    fn unknown_destinations_pass_through_except_the_proxy_itself() {
        let (snap, _) = snapshot_of(config(vec![], clusters(&["svc"])));
        let (head, authority) = req("/");
        let labels = BTreeMap::new();
        let labels = Client {
            labels: &labels,
            namespace: None,
        };
        let elsewhere: SocketAddr = "10.96.0.99:8080".parse().unwrap();
        let got = select(
            &snap,
            None,
            Some(elsewhere),
            local(),
            &labels,
            &head,
            &authority,
        );
        assert!(matches!(got, Ok(Selected::Passthrough(a)) if a == elsewhere));
        let own = select(
            &snap,
            None,
            Some(local()),
            local(),
            &labels,
            &head,
            &authority,
        );
        assert_eq!(own.err(), Some(Reply::NoRoute));
        let unknown = select(&snap, None, None, local(), &labels, &head, &authority);
        assert_eq!(unknown.err(), Some(Reply::NoRoute));
    }

    #[test]
    fn destinations_are_drawn_by_weight() {
        let split = RouteAction::Route(vec![
            WeightedCluster::new(key("a"), 25),
            WeightedCluster::new(key("b"), 75),
        ]);
        let (snap, _) = snapshot_of(config(vec![route(vec![], split)], clusters(&["a", "b"])));
        let r = &snap.listeners[&VIP].routes[0];
        let to_a = (0..8000)
            .filter(|_| destination(r).unwrap().key == key("a"))
            .count();
        // Binomial(8000, 0.25): sd ≈ 39; ±5 sd.
        assert!((1805..=2195).contains(&to_a), "{to_a} of 8000 to a");
    }

    #[test]
    fn an_undefined_or_missing_destination_is_cluster_not_found() {
        let (snap, _) = snapshot_of(config(
            vec![
                route(vec![uri(prefix("/gone"))], to(&key("gone"))),
                route(vec![], RouteAction::Route(vec![])),
            ],
            clusters(&[]),
        ));
        let routes = &snap.listeners[&VIP].routes;
        let gone = destination(&routes[0]).expect("named");
        assert_eq!(gone.key, key("gone"));
        let never = || -> Arc<Endpoint> { panic!("not a passthrough policy") };
        assert_eq!(target(gone, never).err(), Some(Reply::ClusterNotFound));
        assert_eq!(destination(&routes[1]).err(), Some(Reply::ClusterNotFound));
        assert_eq!(Reply::ClusterNotFound.response().status(), 503);
    }

    #[test]
    fn a_passthrough_policy_targets_the_original_destination() {
        let mut c = cluster(&[], LoadBalancer::Passthrough);
        c.policy.connection_pool.connect_timeout = Some(Duration::from_millis(700));
        let (snap, _) = snapshot_of(config(
            vec![route(vec![], to(&key("p")))],
            vec![(key("p"), c)],
        ));
        let dest = destination(&snap.listeners[&VIP].routes[0]).unwrap();
        let ep = Arc::new(Endpoint::new(VIP, None));
        match target(dest, || ep.clone()) {
            Ok(Target::Passthrough(e, t)) => {
                assert!(Arc::ptr_eq(&e, &ep));
                assert_eq!(t, Duration::from_millis(700));
            }
            _ => panic!("passthrough expected"),
        }
        let (snap, _) = snapshot_of(config(vec![], clusters(&["svc"])));
        let dest = destination(&snap.listeners[&VIP].default_route).unwrap();
        assert!(matches!(
            target(dest, || ep.clone()),
            Ok(Target::Cluster(_))
        ));
    }
}
