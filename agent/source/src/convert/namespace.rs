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
}
