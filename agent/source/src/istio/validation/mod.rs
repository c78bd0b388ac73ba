//! Istio's own validation of VirtualService and DestinationRule (istio/istio
//! `pkg/config/validation`), ported rule by rule and applied to the untyped document, so that
//! every field is checked, including those meshpath does not enforce, and so that every problem
//! of an object is reported rather than the first. Messages keep Istio's wording: users search
//! for them, and the conformance corpus (`tests/istio-conformance/`) matches on them.
//!
//! This runs before the conversion to the model (`convert`), which only adds meshpath's own
//! limits on top.

mod destination_rule;
mod header_value;
mod http;
mod http_actions;
pub mod locate;
mod names;
mod policy;
mod virtual_service;

use serde_json::Value;

pub use destination_rule::destination_rule;
pub(crate) use http_actions::GRPC_STATUS;
pub use virtual_service::virtual_service;

/// One problem Istio reports: the field (`spec.http[0].route[1].weight`) and Istio's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// Everything Istio says about one object: errors reject it, warnings do not.
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Findings {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// `result`'s error, if any, as a problem of `path`.
    fn check(&mut self, path: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.err(path, message);
        }
    }
}

/// A field as protobuf sees it: absent and `null` are both "not set".
fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    get(v, key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A string field; unset is "" as in protobuf.
fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    get(v, key).and_then(Value::as_str).unwrap_or_default()
}

/// An integer field; unset is 0 as in protobuf.
fn int(v: &Value, key: &str) -> i64 {
    get(v, key).and_then(Value::as_i64).unwrap_or_default()
}

fn float(v: &Value, key: &str) -> Option<f64> {
    get(v, key).and_then(Value::as_f64)
}

fn boolean(v: &Value, key: &str) -> bool {
    get(v, key).and_then(Value::as_bool).unwrap_or_default()
}

/// The entries of a map field, in document order.
fn entries<'a>(v: &'a Value, key: &str) -> Vec<(&'a String, &'a Value)> {
    get(v, key)
        .and_then(Value::as_object)
        .map(|m| m.iter().collect())
        .unwrap_or_default()
}

fn strings<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    items(v, key).iter().filter_map(Value::as_str).collect()
}

/// `metadata.namespace`, `default` when absent (as `kubectl apply` would use).
fn namespace(object: &Value) -> &str {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .unwrap_or("default")
}

/// Checks every object kind shares (Istio's `validateMetadata`).
fn metadata(object: &Value, out: &mut Findings) {
    let annotations = object.pointer("/metadata/annotations");
    let has = |name: &str| annotations.and_then(|a| a.get(name)).is_some();
    if has("istio.io/dry-run") {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        out.err(
            "metadata.annotations",
            format!(
                "{}/{name} has unsupported annotation istio.io/dry-run, please remove the annotation",
                namespace(object)
            ),
        );
    }
    for internal in [
        "internal.istio.io/parent-namespace",
        "internal.istio.io/parents",
    ] {
        if has(internal) {
            out.err(
                "metadata.annotations",
                format!("\"{internal}\" annotation found, this may not be set by users"),
            );
        }
    }
}

/// `exportTo` (Istio's `validateExportTo`), shared by both kinds.
fn export_to(namespace: &str, spec: &Value, with_selector: bool, out: &mut Findings) {
    let list = strings(spec, "exportTo");
    if list.is_empty() {
        return;
    }
    let f = "spec.exportTo";
    let mut seen: Vec<&str> = Vec::new();
    for e in &list {
        let key = if *e == "." { namespace } else { e };
        if seen.contains(&key) {
            if key != *e {
                out.err(
                    f,
                    format!("duplicate entries in exportTo: . and current namespace {namespace}"),
                );
            } else {
                out.err(f, format!("duplicate entries in exportTo for entry {e}"));
            }
        } else if key == "~" {
            out.err(
                f,
                "exportTo ~ (none) is not allowed for Istio configuration objects",
            );
        } else if key != "*" && !names::is_dns1123_label(key) {
            out.err(
                f,
                "only .,*, or a valid DNS 1123 label is allowed as exportTo entry",
            );
        } else {
            seen.push(key);
        }
    }
    if with_selector && !seen.is_empty() {
        if seen.contains(&namespace) {
            if seen.len() > 1 {
                out.err(
                    f,
                    "destination rule with workload selector cannot have multiple entries in exportTo",
                );
            }
        } else {
            out.err(
                f,
                "destination rule with workload selector cannot have exportTo beyond current namespace",
            );
        }
    }
    if seen.contains(&"*") && list.len() > 1 {
        out.err(
            f,
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
}

#[cfg(test)]
mod tests;
