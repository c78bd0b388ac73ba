//! `networking.istio.io` DestinationRule → [`DestinationRule`].

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use meshpath_model::istio::model::{
    ConnectionPool, DestinationRule, HashAlgorithm, HashKey, LoadBalancer, OutlierDetection,
    PortPolicy, Subset, TrafficPolicy,
};
use meshpath_model::istio::{IstioInvalid, Warning};

mod locality;
mod warmup;

use super::{Ctx, Error};
use crate::error::{ConvertError, Invalid, ObjectKind};
use crate::istio::decode::decode;
use crate::istio::schema::{self, DestinationRuleSpec, Object};

/// Istio's (Envoy's) defaults for what a written `consistentHash` / `outlierDetection` leaves out.
const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

const SIMPLE_EXPECTED: &str = "ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM, PASSTHROUGH";

/// Decodes and validates one DestinationRule document, returning it with its warnings.
pub fn destination_rule(value: Value) -> Result<(DestinationRule, Vec<Warning>), Error> {
    let istio = super::validated(
        ObjectKind::DestinationRule,
        &value,
        crate::istio::validation::destination_rule,
    )?;
    let (object, ignored) = decode::<Object<DestinationRuleSpec>>(value).map_err(Error::Decode)?;
    let mut ctx = Ctx::new(ObjectKind::DestinationRule, &object.metadata, ignored)?;
    ctx.warnings.extend(istio);
    let spec = object.spec;
    let host = ctx.host("spec.host", &spec.host, true)?;
    let policy = traffic_policy(&mut ctx, "spec.trafficPolicy", spec.traffic_policy.as_ref())?;
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut subsets = Vec::with_capacity(spec.subsets.len());
    for (i, s) in spec.subsets.iter().enumerate() {
        let f = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            return Err(ctx.err(format!("{f}.name"), Invalid::Required).into());
        }
        if let Some(first) = names.insert(&s.name, format!("{f}.name")) {
            return Err(ctx
                .err(
                    format!("{f}.name"),
                    Invalid::Duplicate {
                        value: s.name.clone(),
                        first,
                    },
                )
                .into());
        }
        subsets.push(Subset {
            name: s.name.clone(),
            labels: s.labels.clone(),
            traffic_policy: traffic_policy(
                &mut ctx,
                &format!("{f}.trafficPolicy"),
                s.traffic_policy.as_ref(),
            )?,
        });
    }
    let rule = DestinationRule {
        id: ctx.object.id.clone(),
        origin: None,
        host,
        export_to: super::virtual_service::export_to(&ctx.object.id.namespace, &spec.export_to),
        traffic_policy: policy,
        subsets,
    };
    Ok((rule, ctx.warnings))
}

fn traffic_policy(
    ctx: &mut Ctx,
    f: &str,
    p: Option<&schema::TrafficPolicy>,
) -> Result<TrafficPolicy, ConvertError> {
    let Some(p) = p else {
        return Ok(TrafficPolicy::default());
    };
    let mut port_level = Vec::with_capacity(p.port_level_settings.len());
    for (i, s) in p.port_level_settings.iter().enumerate() {
        let pf = format!("{f}.portLevelSettings[{i}]");
        let number = s
            .port
            .as_ref()
            .and_then(|p| p.number)
            .ok_or_else(|| ctx.err(format!("{pf}.port.number"), Invalid::Required))?;
        port_level.push(PortPolicy {
            port: ctx.port(&format!("{pf}.port.number"), number)?,
            load_balancer: match &s.load_balancer {
                Some(lb) => load_balancer(ctx, &format!("{pf}.loadBalancer"), lb)?,
                None => None,
            },
            warmup: warmup::warmup(ctx, &format!("{pf}.loadBalancer"), s.load_balancer.as_ref())?,
            locality: locality::setting(s.load_balancer.as_ref()),
            connection_pool: s
                .connection_pool
                .as_ref()
                .map(|c| connection_pool(ctx, &format!("{pf}.connectionPool"), c))
                .transpose()?,
            outlier_detection: s
                .outlier_detection
                .as_ref()
                .map(|o| outlier(ctx, &format!("{pf}.outlierDetection"), o))
                .transpose()?,
        });
    }
    Ok(TrafficPolicy {
        port_level,
        load_balancer: match &p.load_balancer {
            Some(lb) => load_balancer(ctx, &format!("{f}.loadBalancer"), lb)?,
            None => None,
        },
        warmup: warmup::warmup(ctx, &format!("{f}.loadBalancer"), p.load_balancer.as_ref())?,
        locality: locality::setting(p.load_balancer.as_ref()),
        connection_pool: p
            .connection_pool
            .as_ref()
            .map(|c| connection_pool(ctx, &format!("{f}.connectionPool"), c))
            .transpose()?,
        outlier_detection: p
            .outlier_detection
            .as_ref()
            .map(|o| outlier(ctx, &format!("{f}.outlierDetection"), o))
            .transpose()?,
    })
}

/// `None` for a `loadBalancer` that chooses nothing (`{}`, `simple: UNSPECIFIED`).
fn load_balancer(
    ctx: &Ctx,
    f: &str,
    lb: &schema::LoadBalancer,
) -> Result<Option<LoadBalancer>, ConvertError> {
    match (lb.simple.as_deref(), &lb.consistent_hash) {
        (Some(_), Some(_)) => Err(ctx.err(
            f,
            IstioInvalid::OneOf {
                fields: "simple, consistentHash",
            },
        )),
        (None, None) | (Some("UNSPECIFIED"), None) => Ok(None),
        (Some(simple), None) => Ok(Some(match simple {
            "ROUND_ROBIN" => LoadBalancer::RoundRobin,
            "LEAST_REQUEST" | "LEAST_CONN" => LoadBalancer::LeastRequest,
            "RANDOM" => LoadBalancer::Random,
            "PASSTHROUGH" => LoadBalancer::Passthrough,
            other => {
                return Err(ctx.err(
                    format!("{f}.simple"),
                    Invalid::NotOneOf {
                        value: other.to_owned(),
                        expected: SIMPLE_EXPECTED,
                    },
                ))
            }
        })),
        (None, Some(ch)) => consistent_hash(ctx, &format!("{f}.consistentHash"), ch).map(Some),
    }
}

fn consistent_hash(
    ctx: &Ctx,
    f: &str,
    ch: &schema::ConsistentHash,
) -> Result<LoadBalancer, ConvertError> {
    let mut keys = Vec::new();
    if let Some(h) = &ch.http_header_name {
        keys.push(HashKey::Header(h.to_ascii_lowercase()));
    }
    if let Some(c) = &ch.http_cookie {
        if c.name.is_empty() {
            return Err(ctx.err(format!("{f}.httpCookie.name"), Invalid::Required));
        }
        let ttl = c
            .ttl
            .as_deref()
            .map(|t| ctx.duration(&format!("{f}.httpCookie.ttl"), t))
            .transpose()?;
        keys.push(HashKey::Cookie {
            name: c.name.clone(),
            path: c.path.clone(),
            ttl,
        });
    }
    if ch.use_source_ip == Some(true) {
        keys.push(HashKey::SourceIp);
    }
    if let Some(q) = &ch.http_query_parameter_name {
        keys.push(HashKey::QueryParameter(q.clone()));
    }
    let key_fields = "httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName";
    let [key]: [HashKey; 1] = keys
        .try_into()
        .map_err(|_| ctx.err(f, IstioInvalid::OneOf { fields: key_fields }))?;
    let algorithm = match (&ch.ring_hash, &ch.maglev, ch.minimum_ring_size) {
        (None, None, size) => HashAlgorithm::RingHash {
            minimum_ring_size: size.unwrap_or(DEFAULT_MINIMUM_RING_SIZE),
        },
        (Some(r), None, None) => HashAlgorithm::RingHash {
            minimum_ring_size: r.minimum_ring_size.unwrap_or(DEFAULT_MINIMUM_RING_SIZE),
        },
        (None, Some(m), None) => HashAlgorithm::Maglev {
            table_size: m.table_size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE),
        },
        _ => {
            return Err(ctx.err(
                f,
                IstioInvalid::OneOf {
                    fields: "ringHash, maglev, minimumRingSize",
                },
            ))
        }
    };
    Ok(LoadBalancer::ConsistentHash { key, algorithm })
}

fn connection_pool(
    ctx: &Ctx,
    f: &str,
    c: &schema::ConnectionPool,
) -> Result<ConnectionPool, ConvertError> {
    let mut out = ConnectionPool::default();
    if let Some(tcp) = &c.tcp {
        out.max_connections = ctx.count(&format!("{f}.tcp.maxConnections"), tcp.max_connections)?;
        out.connect_timeout = tcp
            .connect_timeout
            .as_deref()
            .map(|t| ctx.duration_min_1ms(&format!("{f}.tcp.connectTimeout"), t))
            .transpose()?;
    }
    if let Some(http) = &c.http {
        let field = |name: &str| format!("{f}.http.{name}");
        out.http1_max_pending_requests = ctx.count(
            &field("http1MaxPendingRequests"),
            http.http1_max_pending_requests,
        )?;
        out.http2_max_requests = ctx.count(&field("http2MaxRequests"), http.http2_max_requests)?;
        out.max_requests_per_connection = ctx.count(
            &field("maxRequestsPerConnection"),
            http.max_requests_per_connection,
        )?;
        out.max_retries = ctx.count(&field("maxRetries"), http.max_retries)?;
        out.idle_timeout = http
            .idle_timeout
            .as_deref()
            .map(|t| ctx.duration(&field("idleTimeout"), t))
            .transpose()?;
    }
    Ok(out)
}

fn outlier(
    ctx: &Ctx,
    f: &str,
    o: &schema::OutlierDetection,
) -> Result<OutlierDetection, ConvertError> {
    let field = |name: &str| format!("{f}.{name}");
    let duration = |name: &str, value: &Option<String>, default| match value {
        Some(v) => ctx.duration_min_1ms(&field(name), v),
        None => Ok(default),
    };
    let percent = |name: &str, value: Option<i64>, default| match value {
        Some(v) => ctx.int(&field(name), v, 0, 100),
        None => Ok(default),
    };
    // Envoy ejects on 5 consecutive 5xx unless told otherwise; 0 turns it off.
    let consecutive_5xx = ctx.count(&field("consecutive5xxErrors"), o.consecutive_5xx_errors)?;
    let consecutive_gateway = ctx.count(
        &field("consecutiveGatewayErrors"),
        o.consecutive_gateway_errors,
    )?;
    Ok(OutlierDetection {
        consecutive_5xx_errors: match consecutive_5xx {
            None => Some(DEFAULT_CONSECUTIVE_5XX),
            Some(0) => None,
            n => n,
        },
        consecutive_gateway_errors: consecutive_gateway.filter(|n| *n > 0),
        interval: duration("interval", &o.interval, DEFAULT_INTERVAL)?,
        base_ejection_time: duration(
            "baseEjectionTime",
            &o.base_ejection_time,
            DEFAULT_BASE_EJECTION_TIME,
        )?,
        max_ejection_percent: percent(
            "maxEjectionPercent",
            o.max_ejection_percent,
            DEFAULT_MAX_EJECTION_PERCENT,
        )?,
        min_health_percent: percent("minHealthPercent", o.min_health_percent, 0)?,
    })
}
