//! A VirtualService's routes for one listener port: destinations resolved to clusters, the rest
//! carried over into the routing table's types.

use meshpath_model::istio::hosts;
use meshpath_model::istio::model::{self as im, VirtualService};
use meshpath_model::l7::{self, ClusterKey, ServiceRoutes, WeightedCluster};
use meshpath_model::Protocol;

use super::clusters::Ctx;
use super::L7Error;

/// Every cluster a listener can send to, for every client (the whole `exportTo` chain).
pub fn cluster_keys(routes: &ServiceRoutes) -> Vec<ClusterKey> {
    let mut out = own_cluster_keys(routes);
    if let Some(next) = &routes.export.otherwise {
        out.extend(cluster_keys(next));
    }
    out
}

/// The clusters one entry of a listener's chain sends to (not the entries after it).
pub fn own_cluster_keys(routes: &ServiceRoutes) -> Vec<ClusterKey> {
    let mut out = vec![routes.default_cluster.clone()];
    for r in &routes.http {
        if let l7::RouteAction::Route(w) = &r.action {
            out.extend(w.iter().map(|w| w.cluster.clone()));
        }
        out.extend(r.mirrors.iter().map(|m| m.cluster.clone()));
    }
    out
}

/// `route` as served on `port`: `None` when its matches are all for other ports. Problems that
/// do not stop the route from compiling (a subset not defined yet) go to `warnings`.
pub fn http_route(
    ctx: &Ctx<'_>,
    vs: &VirtualService,
    route: &im::HttpRoute,
    port: u16,
    warnings: &mut Vec<L7Error>,
) -> Result<Option<l7::HttpRoute>, Vec<L7Error>> {
    let matches: Vec<l7::HttpMatch> = route
        .matches
        .iter()
        .filter(|m| m.port.is_none_or(|p| p == port))
        .map(http_match)
        .collect();
    if !route.matches.is_empty() && matches.is_empty() {
        return Ok(None);
    }
    let f = format!("spec.http[{}]", route.index);
    let mut errors = Vec::new();
    let action = match &route.action {
        im::Action::Route(dests) => {
            match weighted(ctx, vs, &format!("{f}.route"), dests, port, warnings) {
                Ok(w) => l7::RouteAction::Route(
                    w.into_iter()
                        .enumerate()
                        .map(|(j, (cluster, weight))| {
                            let own = route.destination_headers.get(j).cloned();
                            let own = own.unwrap_or_default();
                            WeightedCluster {
                                cluster,
                                weight,
                                request_headers: header_ops(&own.request),
                                response_headers: header_ops(&own.response),
                            }
                        })
                        .collect(),
                ),
                Err(e) => {
                    errors.extend(e);
                    l7::RouteAction::default()
                }
            }
        }
        im::Action::Redirect(r) => l7::RouteAction::Redirect(l7::Redirect {
            uri: r.uri.clone(),
            authority: r.authority.clone(),
            scheme: r.scheme.clone(),
            // Istio compiles routes per listener port, so "the request's port" is this one.
            port: match r.derive_port {
                Some(im::DerivePort::FromRequestPort) => Some(port),
                _ => r.port,
            },
            protocol_default_port: r.derive_port == Some(im::DerivePort::FromProtocolDefault),
            status: r.status,
        }),
        im::Action::DirectResponse { status, body } => l7::RouteAction::DirectResponse {
            status: *status,
            body: body.as_deref().map(Into::into),
        },
        // Merged away before routes are compiled (`delegate::merge`); one left names no
        // delegate and has been dropped there.
        im::Action::Delegate(_) => return Ok(None),
    };
    let mut mirrors = Vec::with_capacity(route.mirrors.len());
    for (j, m) in route.mirrors.iter().enumerate() {
        let field = format!("{f}.mirrors[{j}]");
        match cluster_key(ctx, vs, &field, &m.destination, port, warnings) {
            Ok(cluster) => mirrors.push(l7::Mirror {
                cluster,
                percentage: m.percentage.0,
            }),
            Err(e) => errors.push(*e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let rewrite = (route.rewrite_uri.is_some()
        || route.rewrite_authority.is_some()
        || route.rewrite_uri_regex.is_some())
    .then(|| l7::Rewrite {
        uri: route.rewrite_uri.clone(),
        authority: route.rewrite_authority.clone(),
        uri_regex: route
            .rewrite_uri_regex
            .as_ref()
            .map(|r| (r.pattern.regex.clone(), r.substitution.clone())),
    });
    Ok(Some(l7::HttpRoute {
        name: route.name.clone(),
        virtual_service: Some(vs.id.name.clone()),
        matches,
        action,
        fault: route.fault.as_ref().map(|f| l7::Fault {
            delay: f.delay.map(|(d, p)| (d, p.0)),
            abort: f.abort.map(|(a, p)| (a, p.0)),
        }),
        mirrors,
        timeout: route.timeout,
        retries: route.retries.as_ref().map(|r| l7::RetryPolicy {
            attempts: r.attempts,
            per_try_timeout: r.per_try_timeout,
            retry_on: r.retry_on.clone(),
            backoff: r.backoff,
        }),
        rewrite,
        request_headers: header_ops(&route.request_headers),
        response_headers: header_ops(&route.response_headers),
        cors: route.cors.as_ref().map(super::cors::policy),
    }))
}

/// Weighted destinations (`field` is the `route` list) → clusters, every error found.
pub fn weighted(
    ctx: &Ctx<'_>,
    vs: &VirtualService,
    field: &str,
    dests: &[(im::Destination, u32)],
    port: u16,
    warnings: &mut Vec<L7Error>,
) -> Result<Vec<(ClusterKey, u32)>, Vec<L7Error>> {
    let mut out = Vec::with_capacity(dests.len());
    let mut errors = Vec::new();
    for (j, (dest, weight)) in dests.iter().enumerate() {
        let field = format!("{field}[{j}].destination");
        match cluster_key(ctx, vs, &field, dest, port, warnings) {
            Ok(key) => out.push((key, *weight)),
            Err(e) => errors.push(*e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The cluster a destination (at `field`) names, for a request that arrived on `listener`.
///
/// A subset no DestinationRule defines is not an error, as in Istio: the route still names the
/// subset's cluster, which the routing table does not hold until a DestinationRule defines it,
/// so the proxy answers 503 "no cluster" (`NC`) for it meanwhile, and serves it as soon as the
/// rule arrives. The VirtualService's other routes work throughout. It is reported in
/// `warnings`, as Istio's analyzer does.
fn cluster_key(
    ctx: &Ctx<'_>,
    vs: &VirtualService,
    field: &str,
    dest: &im::Destination,
    listener: u16,
    warnings: &mut Vec<L7Error>,
) -> Result<ClusterKey, Box<L7Error>> {
    let origin = vs
        .origin
        .clone()
        .unwrap_or_else(|| "<unknown source>".into());
    let model = ctx.model();
    // A wildcard destination (`*.foo.com`, `*-foo.baz`) is valid Istio that names a
    // ServiceEntry host, never a Service: Envoy gets a cluster nobody defines and answers 503
    // (`NC`). The same here, through a key no Service can have (names never hold `*`).
    if hosts::is_wildcard(&dest.host) {
        warnings.push(L7Error::WildcardDestination {
            origin,
            vs: vs.id.clone(),
            field: format!("{field}.host"),
            host: dest.host.clone(),
        });
        return Ok(ClusterKey {
            service: meshpath_model::ObjectRef::new(&vs.id.namespace, &dest.host),
            port: dest.port.unwrap_or(listener),
            subset: dest.subset.clone(),
            view: None,
        });
    }
    let Some(service) = hosts::resolve(&dest.host, &vs.id.namespace, &model.services) else {
        return Err(Box::new(L7Error::UnknownHost {
            origin,
            vs: vs.id.clone(),
            field: format!("{field}.host"),
            host: dest.host.clone(),
        }));
    };
    let ports: Vec<u16> = model.services[service]
        .ports
        .iter()
        .filter(|p| p.protocol == Protocol::Tcp)
        .map(|p| p.port)
        .collect();
    // Istio: the port may be left out when the service has one, and then defaults to the port
    // the request came in on.
    let port = match dest.port {
        Some(p) if ports.contains(&p) => p,
        Some(p) => {
            return Err(Box::new(L7Error::UnknownPort {
                origin,
                vs: vs.id.clone(),
                field: format!("{field}.port.number"),
                service: service.clone(),
                port: p,
            }))
        }
        None => match ports.as_slice() {
            [only] => *only,
            several if several.contains(&listener) => listener,
            several => {
                return Err(Box::new(L7Error::PortRequired {
                    origin,
                    vs: vs.id.clone(),
                    field: format!("{field}.port.number"),
                    service: service.clone(),
                    ports: several
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    listener,
                }))
            }
        },
    };
    if let Some(subset) = &dest.subset {
        let rule = ctx.rule(service);
        if !rule.is_some_and(|r| r.subsets.iter().any(|s| &s.name == subset)) {
            warnings.push(L7Error::UnknownSubset {
                origin,
                vs: vs.id.clone(),
                field: format!("{field}.subset"),
                service: service.clone(),
                subset: subset.clone(),
                rule: rule.map(|r| r.id.clone()),
            });
        }
    }
    Ok(ClusterKey {
        service: service.clone(),
        port,
        subset: dest.subset.clone(),
        view: None,
    })
}

fn http_match(m: &im::HttpMatch) -> l7::HttpMatch {
    let named = |list: &[(String, Option<im::StringMatch>)]| {
        list.iter()
            .map(|(k, s)| (k.clone(), s.as_ref().map(string_match)))
            .collect()
    };
    l7::HttpMatch {
        uri: m.uri.as_ref().map(string_match),
        method: m.method.as_ref().map(string_match),
        authority: m.authority.as_ref().map(string_match),
        scheme: m.scheme.as_ref().map(string_match),
        headers: named(&m.headers),
        without_headers: named(&m.without_headers),
        query_params: m
            .query_params
            .iter()
            .map(|(k, s)| (k.clone(), string_match(s)))
            .collect(),
        source_labels: m.source_labels.clone(),
        ignore_uri_case: m.ignore_uri_case,
    }
}

pub(super) fn string_match(s: &im::StringMatch) -> l7::StringMatch {
    match s {
        im::StringMatch::Exact(v) => l7::StringMatch::Exact(v.clone()),
        im::StringMatch::Prefix(v) => l7::StringMatch::Prefix(v.clone()),
        im::StringMatch::Regex(p) => l7::StringMatch::Regex(p.regex.clone()),
    }
}

fn header_ops(h: &im::HeaderOps) -> l7::HeaderOps {
    l7::HeaderOps {
        set: h.set.clone(),
        add: h.add.clone(),
        remove: h.remove.clone(),
    }
}
