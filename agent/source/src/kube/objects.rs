//! API objects → [`Item`]s, through the same conversions the manifests source uses
//! ([`crate::convert`], [`crate::istio`]).

use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;

use meshpath_model::ObjectRef;

use super::aggregate::Item;
use crate::convert::{self, Converted};
use crate::error::{ConvertError, ObjectKey, ObjectKind, SourceError};
use crate::istio;
use crate::manifests::ParsedObject;

/// Where objects of this source come from, for errors found later (when compiling).
pub const ORIGIN: &str = "kube-apiserver";

/// namespace/name of an object (namespace `default` when empty, as for manifests).
pub fn object_ref(meta: &ObjectMeta) -> ObjectRef {
    let namespace = meta.namespace.as_deref().filter(|n| !n.is_empty());
    ObjectRef::new(
        namespace.unwrap_or("default"),
        meta.name.clone().unwrap_or_default(),
    )
}

pub fn service(svc: &core::Service) -> Item {
    let id = object_ref(&svc.metadata);
    if let Some(alias) = convert::external_name(svc) {
        let result = converted(ObjectKind::Service, &id, alias)
            .map(|a| a.map(|(id, name)| ParsedObject::ExternalName(id, name)));
        return Item { id, result };
    }
    let result = converted(ObjectKind::Service, &id, convert::service(svc)).map(|s| {
        s.map(|mut s| {
            s.origin = Some(ORIGIN.to_owned());
            ParsedObject::Service(s)
        })
    });
    Item { id, result }
}

pub fn endpoint_slice(slice: &discovery::EndpointSlice) -> Item {
    let id = object_ref(&slice.metadata);
    let result = converted(
        ObjectKind::EndpointSlice,
        &id,
        convert::endpoint_slice(slice),
    )
    .map(|s| s.map(ParsedObject::EndpointSlice));
    Item { id, result }
}

pub fn pod(pod: &core::Pod) -> Item {
    let id = object_ref(&pod.metadata);
    let result = convert::pod(pod)
        .map(|p| Some(ParsedObject::Pod(p)))
        .map_err(|source| SourceError::ApiInvalid { source });
    Item { id, result }
}

pub fn namespace(ns: &core::Namespace) -> Item {
    let id = object_ref(&ns.metadata);
    let result = convert::namespace(ns)
        .map(|n| Some(ParsedObject::Namespace(n)))
        .map_err(|source| SourceError::ApiInvalid { source });
    Item { id, result }
}

pub fn node(node: &core::Node) -> Item {
    let id = object_ref(&node.metadata);
    let result = convert::node(node)
        .map(|n| Some(ParsedObject::Node(n)))
        .map_err(|source| SourceError::ApiInvalid { source });
    Item { id, result }
}

/// A VirtualService or DestinationRule, validated as Istio would; warnings (fields meshpath
/// ignores) are logged.
pub fn istio_object(kind: ObjectKind, object: &DynamicObject) -> Item {
    let id = object_ref(&object.metadata);
    let key = ObjectKey::new(kind, id.clone());
    let value = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => {
            let result = Err(SourceError::ApiDecode {
                object: key,
                path: ".".into(),
                source: Arc::new(e),
            });
            return Item { id, result };
        }
    };
    let result = match kind {
        ObjectKind::VirtualService => istio_result(&key, istio::virtual_service(value), |mut v| {
            v.origin = Some(ORIGIN.to_owned());
            ParsedObject::VirtualService(v)
        }),
        _ => istio_result(&key, istio::destination_rule(value), |mut d| {
            d.origin = Some(ORIGIN.to_owned());
            ParsedObject::DestinationRule(Box::new(d))
        }),
    };
    Item { id, result }
}

fn istio_result<T>(
    key: &ObjectKey,
    result: Result<(T, Vec<istio::Warning>), istio::Error>,
    wrap: impl FnOnce(T) -> ParsedObject,
) -> Result<Option<ParsedObject>, SourceError> {
    match result {
        Ok((object, warnings)) => {
            for warning in &warnings {
                tracing::warn!(object = %key, "{key}: {warning}");
            }
            Ok(Some(wrap(object)))
        }
        Err(istio::Error::Decode(e)) => Err(SourceError::ApiDecode {
            object: key.clone(),
            path: e.path,
            source: Arc::new(e.source),
        }),
        Err(istio::Error::Invalid(source)) => Err(SourceError::ApiInvalid { source }),
        // One error per object here: the first, the others follow once it is fixed.
        Err(istio::Error::Istio(all)) => match all.into_iter().next() {
            Some(source) => Err(SourceError::ApiInvalid { source }),
            None => Ok(None),
        },
    }
}

fn converted<T>(
    kind: ObjectKind,
    id: &ObjectRef,
    result: Result<Converted<T>, ConvertError>,
) -> Result<Option<T>, SourceError> {
    match result {
        Ok(Converted::Accepted(object)) => Ok(Some(object)),
        // Debug, not warn: unlike a manifest somebody wrote for meshpath, the cluster is full
        // of headless Services and IPv6 slices that are none of meshpath's business.
        Ok(Converted::Skipped(reason)) => {
            tracing::debug!(kind = kind.as_str(), object = %id, %reason, "skipping object");
            Ok(None)
        }
        Err(source) => Err(SourceError::ApiInvalid { source }),
    }
}
