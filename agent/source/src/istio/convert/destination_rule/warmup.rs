//! `loadBalancer.warmup` (and the deprecated `warmupDurationSecs`) → [`Warmup`], with Istio's
//! defaults for what it leaves out.

use meshpath_model::istio::model::{Percent, Warmup};

use super::super::Ctx;
use crate::error::{ConvertError, Invalid};
use crate::istio::schema;

/// Istio's (Envoy's) `min_weight_percent` when `minimumPercent` is not written.
const DEFAULT_MINIMUM_PERCENT: f64 = 10.0;
/// Envoy's `aggression` when not written: linear.
const DEFAULT_AGGRESSION: f64 = 1.0;

pub(super) fn warmup(
    ctx: &Ctx,
    f: &str,
    lb: Option<&schema::LoadBalancer>,
) -> Result<Option<Warmup>, ConvertError> {
    let Some(lb) = lb else { return Ok(None) };
    if let Some(w) = &lb.warmup {
        let field = format!("{f}.warmup.duration");
        let duration = w
            .duration
            .as_deref()
            .ok_or_else(|| ctx.err(&field, Invalid::Required))?;
        let aggression = w.aggression.unwrap_or(DEFAULT_AGGRESSION);
        if aggression.is_nan() || aggression <= 0.0 {
            return Err(ctx.err(
                format!("{f}.warmup.aggression"),
                Invalid::OutOfRange {
                    min: 0,
                    max: i64::MAX,
                    got: aggression as i64,
                },
            ));
        }
        return Ok(Some(Warmup {
            duration: ctx.duration(&field, duration)?,
            minimum_percent: ctx.percent(
                &format!("{f}.warmup.minimumPercent"),
                w.minimum_percent.unwrap_or(DEFAULT_MINIMUM_PERCENT),
            )?,
            aggression: Percent(aggression),
        }));
    }
    let Some(secs) = lb.warmup_duration_secs.as_deref() else {
        return Ok(None);
    };
    Ok(Some(Warmup {
        duration: ctx.duration(&format!("{f}.warmupDurationSecs"), secs)?,
        minimum_percent: Percent(DEFAULT_MINIMUM_PERCENT),
        aggression: Percent(DEFAULT_AGGRESSION),
    }))
}
