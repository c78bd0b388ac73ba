//! Schema types → model types, with Istio's validation. Each function returns the first problem
//! as a [`ConvertError`] naming object and field; what is accepted but ignored is collected as
//! [`Warning`]s for the caller to log with the file.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use meshpath_model::ObjectRef;

use super::decode::DecodeError;
use super::model::{Destination, Pattern, Percent, StringMatch};
use super::{duration, schema};
use super::{IstioInvalid, Warning};
use crate::error::{ConvertError, Invalid, ObjectKey, ObjectKind};

mod destination_rule;
mod virtual_service;

pub use destination_rule::destination_rule;
pub use virtual_service::virtual_service;

/// Why an Istio document did not become a model object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {}", .0.path, .0.source)]
    Decode(DecodeError),
    #[error(transparent)]
    Invalid(#[from] ConvertError),
    /// Istio's validation rejects the object: every problem it found, in document order.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Istio(Vec<ConvertError>),
}

/// Istio's validation of the document (`check`), before any conversion: its errors reject the
/// object, its warnings are returned for the caller to log with the converter's.
fn validated(
    kind: ObjectKind,
    value: &serde_json::Value,
    check: fn(&serde_json::Value) -> super::validation::Findings,
) -> Result<Vec<Warning>, Error> {
    let findings = check(value);
    let name = |key: &str| {
        value
            .pointer(key)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let object = ObjectKey::new(
        kind,
        ObjectRef::new(
            name("/metadata/namespace").unwrap_or("default"),
            name("/metadata/name").unwrap_or_default(),
        ),
    );
    if !findings.errors.is_empty() {
        return Err(Error::Istio(
            findings
                .errors
                .into_iter()
                .map(|p| ConvertError {
                    object: object.clone(),
                    field: p.path,
                    problem: Box::new(Invalid::Istio(IstioInvalid::Rule { message: p.message })),
                })
                .collect(),
        ));
    }
    Ok(findings
        .warnings
        .into_iter()
        .map(|p| Warning::Istio {
            field: p.path,
            message: p.message,
        })
        .collect())
}

/// One object being converted: builds errors that name it, collects warnings.
struct Ctx {
    object: ObjectKey,
    warnings: Vec<Warning>,
}

impl Ctx {
    fn new(
        kind: ObjectKind,
        meta: &ObjectMeta,
        ignored: Vec<String>,
    ) -> Result<Self, ConvertError> {
        let namespace = meta.namespace.as_deref().filter(|ns| !ns.is_empty());
        let name = meta.name.clone().unwrap_or_default();
        let ctx = Ctx {
            object: ObjectKey::new(kind, ObjectRef::new(namespace.unwrap_or("default"), name)),
            warnings: ignored
                .into_iter()
                .map(|field| Warning::Ignored { field })
                .collect(),
        };
        if ctx.object.id.name.is_empty() {
            return Err(ctx.err("metadata.name", Invalid::Required));
        }
        Ok(ctx)
    }

    fn err(&self, field: impl Into<String>, problem: impl Into<Invalid>) -> ConvertError {
        ConvertError {
            object: self.object.clone(),
            field: field.into(),
            problem: Box::new(problem.into()),
        }
    }

    fn warn(&mut self, warning: Warning) {
        self.warnings.push(warning);
    }

    /// `value` as an integer in `min..=max`.
    fn int<T: TryFrom<i64>>(
        &self,
        field: &str,
        value: i64,
        min: i64,
        max: i64,
    ) -> Result<T, ConvertError> {
        if (min..=max).contains(&value) {
            if let Ok(v) = T::try_from(value) {
                return Ok(v);
            }
        }
        Err(self.err(
            field,
            Invalid::OutOfRange {
                min,
                max,
                got: value,
            },
        ))
    }

    fn port(&self, field: &str, value: i64) -> Result<u16, ConvertError> {
        self.int(field, value, 1, 65535)
    }

    /// A count Istio declares as int32 and rejects when negative.
    fn count(&self, field: &str, value: Option<i64>) -> Result<Option<u32>, ConvertError> {
        value
            .map(|v| self.int(field, v, 0, i64::from(i32::MAX)))
            .transpose()
    }

    fn duration(&self, field: &str, value: &str) -> Result<Duration, ConvertError> {
        duration::parse(value).map_err(|reason| {
            self.err(
                field,
                IstioInvalid::BadDuration {
                    value: value.to_owned(),
                    reason,
                },
            )
        })
    }

    /// A duration Istio requires to be at least 1ms (delays, timeouts of connections, ejection).
    fn duration_min_1ms(&self, field: &str, value: &str) -> Result<Duration, ConvertError> {
        let d = self.duration(field, value)?;
        if d < Duration::from_millis(1) {
            return Err(self.err(
                field,
                IstioInvalid::DurationTooShort {
                    value: value.to_owned(),
                    min: "1ms",
                },
            ));
        }
        Ok(d)
    }

    fn percent(&self, field: &str, value: f64) -> Result<Percent, ConvertError> {
        if (0.0..=100.0).contains(&value) {
            Ok(Percent(value))
        } else {
            Err(self.err(
                field,
                IstioInvalid::Percentage {
                    got: value.to_string(),
                },
            ))
        }
    }

    /// `percentage.value`, else the deprecated integer `percent`, else `default`.
    fn percent_or(
        &self,
        field: &str,
        percentage: &Option<schema::Percent>,
        percent: (&str, Option<i64>),
        default: f64,
    ) -> Result<Percent, ConvertError> {
        match (percentage, percent.1) {
            (Some(p), _) => self.percent(&format!("{field}.value"), p.value),
            (None, Some(p)) => Ok(Percent(self.int::<u8>(percent.0, p, 0, 100)?.into())),
            (None, None) => Ok(Percent(default)),
        }
    }

    /// A StringMatch oneof. `{}` is `None` where `presence` is allowed (headers: "is present").
    fn string_match(
        &self,
        field: &str,
        m: &schema::StringMatch,
        presence: bool,
    ) -> Result<Option<StringMatch>, ConvertError> {
        let one_of = IstioInvalid::OneOf {
            fields: "exact, prefix, regex",
        };
        match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), None, None) => Ok(Some(StringMatch::Exact(e.clone()))),
            (None, Some(p), None) => Ok(Some(StringMatch::Prefix(p.clone()))),
            // Istio reads a regex of `*` (not RE2) as "present".
            (None, None, Some(r)) if presence && r == "*" => Ok(None),
            (None, None, Some(r)) => Ok(Some(StringMatch::Regex(
                self.regex(&format!("{field}.regex"), r)?,
            ))),
            (None, None, None) if presence => Ok(None),
            _ => Err(self.err(field, one_of)),
        }
    }

    /// Envoy matches regexes as RE2 full matches: anchor them so `v1` does not match `/v12`.
    fn regex(&self, field: &str, source: &str) -> Result<Pattern, ConvertError> {
        self.regex_as(field, source, &format!("^(?:{source})$"))
    }

    /// `source` compiled as `compiled` (a form of it), errors naming `source`.
    fn regex_as(&self, field: &str, source: &str, compiled: &str) -> Result<Pattern, ConvertError> {
        match regex::Regex::new(compiled) {
            Ok(regex) => Ok(Pattern {
                source: source.to_owned(),
                regex: regex.into(),
            }),
            Err(e) => {
                // The regex crate's message spans lines (pattern, caret, reason): keep the reason.
                let text = e.to_string();
                let reason = text.lines().last().unwrap_or_default().trim();
                let message = reason.strip_prefix("error: ").unwrap_or(reason).to_owned();
                Err(self.err(
                    field,
                    IstioInvalid::BadRegex {
                        value: source.to_owned(),
                        message,
                    },
                ))
            }
        }
    }

    /// A host as written in `hosts`, `destination.host` or a DestinationRule's `host`: a short
    /// name, an FQDN, or (where `wildcard`) `*.suffix` / `*`. Lower-cased, as DNS compares.
    fn host(&self, field: &str, value: &str, wildcard: bool) -> Result<String, ConvertError> {
        let bad = |reason| {
            self.err(
                field,
                IstioInvalid::BadHost {
                    value: value.to_owned(),
                    reason,
                },
            )
        };
        if value.is_empty() {
            return Err(self.err(field, Invalid::Required));
        }
        if value.contains('/') {
            return Err(bad(
                "namespace/host is the Sidecar and Gateway form; write the host alone",
            ));
        }
        if value.contains('*') {
            let tail = value
                .strip_prefix('*')
                .filter(|_| wildcard)
                .ok_or_else(|| {
                    bad(if wildcard {
                        "'*' may only start it, as in *.example.com"
                    } else {
                        "a destination cannot be a wildcard"
                    })
                })?;
            // `*.example.com`, and also `*foo.com` / `*-foo.com` (Istio's wildcard label).
            if tail.starts_with('-') && tail.len() == 1 || tail.contains('*') {
                return Err(bad("'*' may only start it, as in *.example.com"));
            }
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*'))
        {
            return Err(bad(
                "only letters, digits, '-', '.' and a leading '*' are allowed",
            ));
        }
        Ok(value.to_ascii_lowercase())
    }

    fn destination(
        &self,
        field: &str,
        d: &schema::Destination,
    ) -> Result<Destination, ConvertError> {
        let host = self.host(&format!("{field}.host"), &d.host, true)?;
        let subset = match d.subset.as_deref() {
            Some("") => return Err(self.err(format!("{field}.subset"), Invalid::Empty)),
            s => s.map(str::to_owned),
        };
        let port = match d.port.as_ref().and_then(|p| p.number) {
            Some(n) => Some(self.port(&format!("{field}.port.number"), n)?),
            None => None,
        };
        Ok(Destination { host, subset, port })
    }
}

/// A `directResponse.body.bytes` (base64, as protobuf writes bytes in JSON/YAML, standard or
/// URL-safe alphabet) decoded; `None` when it is not base64.
fn base64_bytes(encoded: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::with_capacity(encoded.len() * 3 / 4);
    for c in encoded.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => continue,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(u8::try_from((bits >> count) & 0xff).ok()?);
        }
    }
    Some(out)
}
