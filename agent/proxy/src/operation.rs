//! The span operation name Istio gives a request: the route decorator pilot writes for each
//! Envoy route (one per VirtualService `match`), `<host>:<port><path>`.
//! - `<host>:<port>`: the destination service's FQDN and port when the route sends to one
//!   cluster; otherwise (weighted destinations, redirects, direct responses) the
//!   VirtualService's name and the listener's port;
//! - `<path>`: the match's uri as Envoy's route has it: a prefix followed by `*`, an exact path,
//!   a regex; `/*` when the match has no uri (Envoy's route then matches prefix `/`).
//!
//! Without a route (no match, passthrough) Envoy's span keeps the name it started with, for an
//! outbound listener `egress <host>`.

use meshpath_model::l7::{HttpMatch, StringMatch};

use crate::matching::Matcher;
use crate::snapshot::RouteRt;

/// The operation of `route`, selected by `matcher` (one of `route.matchers`, `None` when the
/// route has no matches) for a request to a listener on `port`.
pub(crate) fn of(route: &RouteRt, matcher: Option<&Matcher>, port: u16) -> String {
    let matched = matcher.and_then(|m| {
        let i = route.matchers.iter().position(|x| std::ptr::eq(x, m))?;
        route.route.matches.get(i)
    });
    let path = path(matched);
    match route.dests.as_slice() {
        // `dests` already lacks the zero weights Istio drops, so a 100/0 split is one cluster.
        [(one, _)] => {
            let k = &one.key;
            let (name, ns) = (&k.service.name, &k.service.namespace);
            format!("{name}.{ns}.svc.cluster.local:{}{path}", k.port)
        }
        _ => {
            let vs = route.route.virtual_service.as_deref().unwrap_or("-");
            format!("{vs}:{port}{path}")
        }
    }
}

/// Envoy's name for an outbound span no route decorated.
pub(crate) fn undecorated(authority: &str) -> String {
    format!("egress {authority}")
}

fn path(m: Option<&HttpMatch>) -> String {
    match m.and_then(|m| m.uri.as_ref()) {
        None => "/*".to_owned(),
        Some(StringMatch::Prefix(p)) => format!("{p}*"),
        Some(StringMatch::Exact(p)) => p.clone(),
        Some(StringMatch::Regex(re)) => {
            // The source anchors the user's pattern as `^(?:...)$`; Istio shows the pattern.
            let s = re.as_str();
            s.strip_prefix("^(?:")
                .and_then(|s| s.strip_suffix(")$"))
                .unwrap_or(s)
                .to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use meshpath_model::l7::{HttpRoute, RouteAction, WeightedCluster};
    use meshpath_model::ObjectRef;

    use super::*;
    use crate::snapshot::{route_rt, Dest};

    fn key(name: &str, port: u16, subset: Option<&str>) -> meshpath_model::l7::ClusterKey {
        meshpath_model::l7::ClusterKey {
            service: ObjectRef {
                namespace: "shop".into(),
                name: name.into(),
            },
            port,
            subset: subset.map(Into::into),
            view: None,
        }
    }

    fn rt(matches: Vec<HttpMatch>, dests: &[(&str, u32)]) -> RouteRt {
        let route = HttpRoute {
            virtual_service: Some("reviews-route".into()),
            matches,
            action: RouteAction::Route(
                dests
                    .iter()
                    .map(|(subset, weight)| {
                        WeightedCluster::new(key("reviews", 9080, Some(subset)), *weight)
                    })
                    .collect(),
            ),
            ..HttpRoute::default()
        };
        route_rt(&route, &|k| Dest {
            key: crate::snapshot::ClusterId::new(k),
            cluster: None,
            ops: None,
        })
    }

    fn uri(m: StringMatch) -> HttpMatch {
        HttpMatch {
            uri: Some(m),
            ..HttpMatch::default()
        }
    }

    #[test]
    fn one_destination_names_its_host_and_port_whatever_the_subset() {
        let r = rt(vec![], &[("v2", 100)]);
        assert_eq!(of(&r, None, 80), "reviews.shop.svc.cluster.local:9080/*");
        // Istio drops the zero weight: one cluster left.
        let r = rt(vec![], &[("v1", 0), ("v2", 100)]);
        assert_eq!(of(&r, None, 80), "reviews.shop.svc.cluster.local:9080/*");
    }

    #[test]
    fn a_weighted_split_names_the_virtual_service_and_the_listener_port() {
        let r = rt(vec![], &[("v1", 20), ("v2", 80)]);
        assert_eq!(of(&r, None, 80), "reviews-route:80/*");
    }

    #[test]
    fn the_matched_uri_is_the_path() {
        let re = Arc::new(regex::Regex::new("^(?:/api/v[0-9]+)$").unwrap());
        let r = rt(
            vec![
                uri(StringMatch::Prefix("/api".into())),
                uri(StringMatch::Exact("/login".into())),
                uri(StringMatch::Regex(re)),
                HttpMatch::default(),
            ],
            &[("v1", 100)],
        );
        let host = "reviews.shop.svc.cluster.local:9080";
        let names: Vec<String> = r.matchers.iter().map(|m| of(&r, Some(m), 80)).collect();
        assert_eq!(
            names,
            [
                format!("{host}/api*"),
                format!("{host}/login"),
                format!("{host}/api/v[0-9]+"),
                format!("{host}/*"),
            ]
        );
    }

    #[test]
    fn no_route_keeps_envoys_egress_name() {
        assert_eq!(undecorated("reviews:9080"), "egress reviews:9080");
    }
}
