//! Istio's `ValidateDestinationRule`: host, subsets, traffic policies, exportTo, selector.

use serde_json::Value;

use super::http::subset_name;
use super::policy::traffic_policy;
use super::{entries, export_to, get, items, metadata, names, namespace, text, Findings};

/// Every problem Istio finds in a DestinationRule object.
pub fn destination_rule(object: &Value) -> Findings {
    let mut out = Findings::default();
    metadata(object, &mut out);
    let empty = Value::Null;
    let spec = get(object, "spec").unwrap_or(&empty);
    out.check("spec.host", names::wildcard_domain(text(spec, "host")));
    if let Some(p) = get(spec, "trafficPolicy") {
        traffic_policy("spec.trafficPolicy", p, &mut out);
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, subset) in items(spec, "subsets").iter().enumerate() {
        let f = format!("spec.subsets[{i}]");
        if subset.is_null() {
            out.err(&f, "subset may not be null");
            continue;
        }
        let name = text(subset, "name");
        if seen.contains(&name) {
            out.err(
                format!("{f}.name"),
                format!("duplicate subset names: {name}"),
            );
        }
        seen.push(name);
        out.check(&format!("{f}.name"), subset_name(name));
        for (key, value) in entries(subset, "labels") {
            for e in names::label(key, value.as_str().unwrap_or_default()) {
                out.err(format!("{f}.labels.{key}"), e);
            }
        }
        if let Some(p) = get(subset, "trafficPolicy") {
            traffic_policy(&format!("{f}.trafficPolicy"), p, &mut out);
        }
    }
    let selector = get(spec, "workloadSelector");
    export_to(namespace(object), spec, selector.is_some(), &mut out);
    if let Some(selector) = selector {
        let labels = entries(selector, "matchLabels");
        for (k, v) in &labels {
            let v = v.as_str().unwrap_or_default();
            let f = "spec.workloadSelector.matchLabels";
            if k.is_empty() {
                out.err(
                    f,
                    format!("empty key is not supported in selector: \"{k}={v}\""),
                );
            }
            if k.contains('*') || v.contains('*') {
                out.err(
                    f,
                    format!("wildcard is not supported in selector: \"{k}={v}\""),
                );
            }
        }
        if labels.is_empty() {
            out.warn(
                "spec.workloadSelector",
                "workload selector specified without labels",
            );
        }
    }
    out
}
