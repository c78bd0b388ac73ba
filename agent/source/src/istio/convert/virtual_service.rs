//! `networking.istio.io` VirtualService → [`VirtualService`].

use serde_json::Value;

use meshpath_model::istio::model::{
    Action, DerivePort, Destination, DestinationHeaders, HttpRoute, Mirror, Redirect, TcpRoute,
    VirtualService,
};
use meshpath_model::istio::{IstioInvalid, Warning};
use meshpath_model::ObjectRef;

use super::{Ctx, Error};
use crate::error::{ConvertError, Invalid, ObjectKind};
use crate::istio::decode::decode;
use crate::istio::schema::{self, Object, VirtualServiceSpec};

mod cors;
mod http;

use http::{fault, header_ops, http_match, regex_rewrite, retries};

/// The gateway name that means "sidecars", i.e. the traffic meshpath routes.
const MESH: &str = "mesh";

/// Decodes and validates one VirtualService document, returning it with its warnings.
pub fn virtual_service(value: Value) -> Result<(VirtualService, Vec<Warning>), Error> {
    let istio = super::validated(
        ObjectKind::VirtualService,
        &value,
        crate::istio::validation::virtual_service,
    )?;
    let (object, ignored) = decode::<Object<VirtualServiceSpec>>(value).map_err(Error::Decode)?;
    let mut ctx = Ctx::new(ObjectKind::VirtualService, &object.metadata, ignored)?;
    ctx.warnings.extend(istio);
    let spec = object.spec;
    // No hosts: a delegate, whose `http` routes apply only through a root's `delegate`
    // (merged when compiling); Istio's validation of it has passed.
    if spec.hosts.is_empty() {
        let mut vs = VirtualService {
            id: ctx.object.id.clone(),
            origin: None,
            hosts: Vec::new(),
            export_to: None,
            http: Vec::new(),
            tcp: Vec::new(),
        };
        for (i, route) in spec.http.iter().enumerate() {
            if let Some(route) = http_route(&mut ctx, i, route)? {
                vs.http.push(route);
            }
        }
        return Ok((vs, ctx.warnings));
    }
    let hosts = spec
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| ctx.host(&format!("spec.hosts[{i}]"), h, true))
        .collect::<Result<Vec<_>, _>>()?;
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_none() {
        return Err(ctx
            .err(
                "spec",
                IstioInvalid::AtLeastOneOf {
                    fields: "http, tcp, tls",
                },
            )
            .into());
    }
    if spec.tls.is_some() {
        ctx.warn(Warning::NotYetSupported {
            field: "spec.tls".into(),
        });
    }
    for (i, gateway) in spec.gateways.iter().enumerate().filter(|(_, g)| *g != MESH) {
        ctx.warn(Warning::Gateway {
            field: format!("spec.gateways[{i}]"),
            gateway: gateway.clone(),
        });
    }
    let mut vs = VirtualService {
        id: ctx.object.id.clone(),
        origin: None,
        hosts,
        export_to: export_to(&ctx.object.id.namespace, &spec.export_to),
        http: Vec::new(),
        tcp: Vec::new(),
    };
    // Gateways listed without `mesh`: the routes are for those gateways only.
    if !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == MESH) {
        return Ok((vs, ctx.warnings));
    }
    for (i, route) in spec.http.iter().enumerate() {
        if let Some(route) = http_route(&mut ctx, i, route)? {
            vs.http.push(route);
        }
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        if let Some(route) = tcp_route(&mut ctx, i, route)? {
            vs.tcp.push(route);
        }
    }
    Ok((vs, ctx.warnings))
}

/// `exportTo` (checked by Istio's validation) as the namespaces it names, `.` being `own`;
/// `None` for every namespace (`*`, or nothing written).
pub(super) fn export_to(own: &str, list: &[String]) -> Option<std::collections::BTreeSet<String>> {
    if list.is_empty() || list.iter().any(|e| e == "*") {
        return None;
    }
    Some(
        list.iter()
            .map(|e| if e == "." { own.to_owned() } else { e.clone() })
            .collect(),
    )
}

/// `None` when every match of the route is for something meshpath does not route (another
/// gateway): the route cannot apply, and dropping it beats widening it to "match everything".
fn http_route(
    ctx: &mut Ctx,
    i: usize,
    r: &schema::HttpRoute,
) -> Result<Option<HttpRoute>, ConvertError> {
    let f = format!("spec.http[{i}]");
    let mut matches = Vec::new();
    for (j, m) in r.matches.iter().enumerate() {
        if let Some(m) = http_match(ctx, &format!("{f}.match[{j}]"), m)? {
            matches.push(m);
        }
    }
    if !r.matches.is_empty() && matches.is_empty() {
        return Ok(None);
    }
    let action = match (r.route.is_empty(), &r.redirect, &r.direct_response) {
        (true, None, None) if r.delegate.is_some() => {
            let d = r.delegate.as_ref().expect("checked");
            let namespace = d.namespace.as_deref().filter(|ns| !ns.is_empty());
            Action::Delegate(ObjectRef::new(
                namespace.unwrap_or(&ctx.object.id.namespace),
                d.name.clone(),
            ))
        }
        (false, None, None) => {
            Action::Route(weighted(ctx, &format!("{f}.route"), &r.route, false)?)
        }
        (true, Some(redirect), None) => Action::Redirect(Redirect {
            uri: redirect.uri.clone(),
            authority: redirect.authority.clone(),
            scheme: redirect.scheme.clone(),
            port: redirect
                .port
                .map(|p| ctx.port(&format!("{f}.redirect.port"), p))
                .transpose()?,
            derive_port: match redirect.derive_port.as_deref() {
                Some("FROM_PROTOCOL_DEFAULT") => Some(DerivePort::FromProtocolDefault),
                Some("FROM_REQUEST_PORT") => Some(DerivePort::FromRequestPort),
                _ => None,
            },
            status: ctx.int(
                &format!("{f}.redirect.redirectCode"),
                redirect.redirect_code.unwrap_or(301),
                300,
                399,
            )?,
        }),
        (true, None, Some(d)) => {
            let status = d
                .status
                .ok_or_else(|| ctx.err(format!("{f}.directResponse.status"), Invalid::Required))?;
            let body = match &d.body {
                None => None,
                Some(schema::Body {
                    string: Some(s),
                    bytes: None,
                }) => Some(s.clone().into_bytes()),
                Some(schema::Body {
                    string: None,
                    bytes: Some(b),
                }) => Some(super::base64_bytes(b).ok_or_else(|| {
                    ctx.err(
                        format!("{f}.directResponse.body.bytes"),
                        IstioInvalid::Rule {
                            message: "not valid base64".into(),
                        },
                    )
                })?),
                Some(_) => {
                    return Err(ctx.err(
                        format!("{f}.directResponse.body"),
                        IstioInvalid::OneOf {
                            fields: "string, bytes",
                        },
                    ))
                }
            };
            let status = ctx.int(&format!("{f}.directResponse.status"), status, 200, 599)?;
            Action::DirectResponse { status, body }
        }
        _ => {
            return Err(ctx.err(
                &f,
                IstioInvalid::OneOf {
                    fields: "route, redirect, directResponse",
                },
            ))
        }
    };
    let fault = r
        .fault
        .as_ref()
        .map(|spec| fault(ctx, &format!("{f}.fault"), spec))
        .transpose()?;
    let mut mirrors = Vec::with_capacity(r.mirrors.len() + 1);
    if let Some(m) = &r.mirror {
        mirrors.push(Mirror {
            destination: ctx.destination(&format!("{f}.mirror"), m)?,
            // Istio mirrors everything when no percentage is given.
            percentage: ctx.percent_or(
                &format!("{f}.mirrorPercentage"),
                &r.mirror_percentage,
                (&format!("{f}.mirrorPercent"), r.mirror_percent),
                100.0,
            )?,
        });
    }
    for (j, m) in r.mirrors.iter().enumerate() {
        let mf = format!("{f}.mirrors[{j}]");
        mirrors.push(Mirror {
            destination: ctx.destination(&format!("{mf}.destination"), &m.destination)?,
            percentage: ctx.percent_or(
                &format!("{mf}.percentage"),
                &m.percentage,
                ("", None),
                100.0,
            )?,
        });
    }
    let timeout = r
        .timeout
        .as_deref()
        .map(|t| ctx.duration(&format!("{f}.timeout"), t))
        .transpose()?;
    let retries = r
        .retries
        .as_ref()
        .map(|rt| retries(ctx, &format!("{f}.retries"), rt))
        .transpose()?;
    let headers = r.headers.as_ref();
    let rewrite_uri_regex = r
        .rewrite
        .as_ref()
        .and_then(|w| w.uri_regex_rewrite.as_ref())
        .map(|rr| regex_rewrite(ctx, &format!("{f}.rewrite.uriRegexRewrite"), rr))
        .transpose()?;
    let destination_headers = r
        .route
        .iter()
        .map(|rd| DestinationHeaders {
            request: header_ops(rd.headers.as_ref().and_then(|h| h.request.as_ref())),
            response: header_ops(rd.headers.as_ref().and_then(|h| h.response.as_ref())),
        })
        .collect();
    let cors = r
        .cors_policy
        .as_ref()
        .map(|c| cors::cors(ctx, &format!("{f}.corsPolicy"), c))
        .transpose()?;
    Ok(Some(HttpRoute {
        index: i,
        name: r.name.clone(),
        matches,
        action,
        fault,
        mirrors,
        timeout,
        retries,
        rewrite_uri: r.rewrite.as_ref().and_then(|w| w.uri.clone()),
        rewrite_authority: r.rewrite.as_ref().and_then(|w| w.authority.clone()),
        rewrite_uri_regex,
        request_headers: header_ops(headers.and_then(|h| h.request.as_ref())),
        response_headers: header_ops(headers.and_then(|h| h.response.as_ref())),
        destination_headers,
        cors,
    }))
}

/// Route destinations with their weights: one destination gets everything whatever its weight
/// says (100); several share in proportion to their weights. Istio hands the weights to Envoy
/// as written and Envoy draws against their sum, so `http:` routes keep them (`to_100`
/// false); `tcp:` routes become kernel slots, a hundred per frontend, so their weights are
/// scaled to sum to 100 (`to_100`).
fn weighted(
    ctx: &Ctx,
    f: &str,
    route: &[schema::RouteDestination],
    to_100: bool,
) -> Result<Vec<(Destination, u32)>, ConvertError> {
    let mut out = Vec::with_capacity(route.len());
    for (j, rd) in route.iter().enumerate() {
        let destination = ctx.destination(&format!("{f}[{j}].destination"), &rd.destination)?;
        let weight = ctx.int(
            &format!("{f}[{j}].weight"),
            rd.weight.unwrap_or(0),
            0,
            i64::from(i32::MAX),
        )?;
        out.push((destination, weight));
    }
    match out.as_mut_slice() {
        [] => return Err(ctx.err(f, Invalid::Required)),
        [(_, weight)] => *weight = 100,
        several => {
            let sum: i64 = several.iter().map(|(_, w)| i64::from(*w)).sum();
            if sum == 0 {
                return Err(ctx.err(f, IstioInvalid::WeightsSum { sum }));
            }
            if to_100 && sum != 100 {
                normalise(several, sum);
            }
        }
    }
    Ok(out)
}

/// `None` when no match can apply to mesh traffic on this node (see [`http_route`]).
fn tcp_route(
    ctx: &mut Ctx,
    i: usize,
    r: &schema::TcpRoute,
) -> Result<Option<TcpRoute>, ConvertError> {
    let f = format!("spec.tcp[{i}]");
    let mut ports = Vec::new();
    let mut any_port = r.matches.is_empty();
    let mut kept = 0;
    for (j, m) in r.matches.iter().enumerate() {
        let mf = format!("{f}.match[{j}]");
        if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == MESH) {
            ctx.warn(Warning::NotForMesh { field: mf });
            continue;
        }
        // Conditions on the client the kernel cannot check per connection yet: dropping the
        // match keeps such traffic on its Service rather than routing every client.
        if !m.source_labels.is_empty()
            || !m.destination_subnets.is_empty()
            || m.source_namespace.is_some()
        {
            ctx.warn(Warning::NotYetSupported { field: mf });
            continue;
        }
        kept += 1;
        match m.port {
            Some(p) => ports.push(ctx.port(&format!("{mf}.port"), p)?),
            None => any_port = true,
        }
    }
    if !r.matches.is_empty() && kept == 0 {
        return Ok(None);
    }
    // `headers` belongs to HTTP destinations only; on a TCP one it means nothing.
    for (j, _) in r
        .route
        .iter()
        .enumerate()
        .filter(|(_, rd)| rd.headers.is_some())
    {
        ctx.warn(Warning::Ignored {
            field: format!("{f}.route[{j}].headers"),
        });
    }
    let route = weighted(ctx, &format!("{f}.route"), &r.route, true)?;
    Ok(Some(TcpRoute {
        index: i,
        ports: if any_port { Vec::new() } else { ports },
        route,
    }))
}

/// Scales weights summing to `sum` to sum to 100, by largest remainder (Istio's rounding of
/// weights that do not sum to 100).
fn normalise(weights: &mut [(Destination, u32)], sum: i64) {
    let mut scaled: Vec<(usize, i64, i64)> = weights
        .iter()
        .enumerate()
        .map(|(i, (_, w))| {
            let x = i64::from(*w) * 100;
            (i, x / sum, x % sum)
        })
        .collect();
    let mut left = 100 - scaled.iter().map(|(_, q, _)| q).sum::<i64>();
    scaled.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    for (_, q, _) in &mut scaled {
        if left == 0 {
            break;
        }
        *q += 1;
        left -= 1;
    }
    for (i, q, _) in scaled {
        weights[i].1 = u32::try_from(q).unwrap_or(0);
    }
}
