//! `v1` Namespaces, and the per-workload opt-in to same-node socket redirection.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;

use meshpath_model::Namespace;

use super::fields::Ctx;
use crate::error::{ConvertError, ObjectKind};

/// Annotation (on a pod, or on its namespace for every pod without its own) letting the
/// agent hand the workload's bytes between sockets directly. Only workloads known to read
/// their sockets safely opt in: a redirected socket's blocking `recv()` may return EAGAIN.
pub const SOCKET_REDIRECT_ANNOTATION: &str = "meshpath.io/socket-redirect";

/// `"true"` or `"false"`; anything else (or no annotation) leaves the decision to the next
/// level, and an unreadable value is logged rather than rejecting the whole object.
pub fn socket_redirect(
    annotations: Option<&BTreeMap<String, String>>,
    object: &str,
) -> Option<bool> {
    let value = annotations?.get(SOCKET_REDIRECT_ANNOTATION)?;
    match value.trim() {
        "true" => Some(true),
        "false" => Some(false),
        other => {
            tracing::warn!(
                object,
                value = other,
                annotation = SOCKET_REDIRECT_ANNOTATION,
                "annotation is neither \"true\" nor \"false\"; ignored"
            );
            None
        }
    }
}

/// A Node: its locality (`topology.kubernetes.io/region|zone`, `topology.istio.io/subzone`).
pub fn node(node: &core::Node) -> Result<meshpath_model::Node, ConvertError> {
    let ctx = Ctx::new(ObjectKind::Node, &node.metadata)?;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    Ok(meshpath_model::Node {
        id: ctx.id(),
        name: node.metadata.name.clone().unwrap_or_default(),
        locality: meshpath_model::Locality::from_labels(&labels),
    })
}

pub fn namespace(ns: &core::Namespace) -> Result<Namespace, ConvertError> {
    let ctx = Ctx::new(ObjectKind::Namespace, &ns.metadata)?;
    let name = ns.metadata.name.clone().unwrap_or_default();
    Ok(Namespace {
        id: ctx.id(),
        socket_redirect: socket_redirect(ns.metadata.annotations.as_ref(), &name),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ns(annotation: Option<&str>) -> core::Namespace {
        core::Namespace {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                annotations: annotation.map(|v| {
                    BTreeMap::from([(SOCKET_REDIRECT_ANNOTATION.to_owned(), v.to_owned())])
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn reads_the_opt_in() {
        let on = namespace(&ns(Some("true"))).unwrap();
        assert_eq!((on.name.as_str(), on.socket_redirect), ("shop", Some(true)));
        assert_eq!(
            namespace(&ns(Some("false"))).unwrap().socket_redirect,
            Some(false)
        );
        assert_eq!(namespace(&ns(None)).unwrap().socket_redirect, None);
        assert_eq!(namespace(&ns(Some("yes"))).unwrap().socket_redirect, None);
    }

    #[test]
    fn a_nodes_locality_comes_from_its_topology_labels() {
        let labels = [
            ("topology.kubernetes.io/region", "eu-west"),
            ("topology.kubernetes.io/zone", "eu-west-1a"),
            ("topology.istio.io/subzone", "rack7"),
        ];
        let n = core::Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let node = node(&n).unwrap();
        assert_eq!(node.name, "n1");
        assert_eq!(node.locality.to_string(), "eu-west/eu-west-1a/rack7");
        let bare = core::Node {
            metadata: ObjectMeta {
                name: Some("n2".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(node_of(&bare).locality.is_empty());
    }

    fn node_of(n: &core::Node) -> meshpath_model::Node {
        node(n).unwrap()
    }
}
