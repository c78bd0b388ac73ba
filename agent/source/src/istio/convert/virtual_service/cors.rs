//! An `http:` route's `corsPolicy` (already checked by Istio's validation) → [`Cors`].

use meshpath_model::istio::model::{Cors, StringMatch};

use super::super::Ctx;
use crate::error::{ConvertError, Invalid};
use crate::istio::schema;

pub(super) fn cors(ctx: &Ctx, f: &str, c: &schema::CorsPolicy) -> Result<Cors, ConvertError> {
    let mut allow_origins = Vec::with_capacity(c.allow_origins.len() + c.allow_origin.len());
    for (i, m) in c.allow_origins.iter().enumerate() {
        if let Some(m) = ctx.string_match(&format!("{f}.allowOrigins[{i}]"), m, false)? {
            allow_origins.push(m);
        }
    }
    allow_origins.extend(c.allow_origin.iter().cloned().map(StringMatch::Exact));
    let forward_unmatched_preflights = match c.unmatched_preflights.as_deref() {
        None | Some("UNSPECIFIED") => None,
        Some("FORWARD") => Some(true),
        Some("IGNORE") => Some(false),
        Some(other) => {
            return Err(ctx.err(
                format!("{f}.unmatchedPreflights"),
                Invalid::NotOneOf {
                    value: other.to_owned(),
                    expected: "UNSPECIFIED, FORWARD, IGNORE",
                },
            ))
        }
    };
    Ok(Cors {
        allow_origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age: c
            .max_age
            .as_deref()
            .map(|t| ctx.duration(&format!("{f}.maxAge"), t))
            .transpose()?,
        allow_credentials: c.allow_credentials,
        forward_unmatched_preflights,
    })
}
