//! One manifest file's text → the model objects it defines, or every error found in it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::de::DeserializeOwned;
use serde_json::Value;

use meshpath_model::{EndpointSlice, Namespace, ObjectRef, Pod, Service};

use crate::convert::{self, Converted, SkipReason};
use crate::error::{ConvertError, Invalid, ObjectKey, ObjectKind, SourceError};
use crate::istio;

use super::notice::{NoticeKind, SourceNotice};

/// An object of a manifest file that passed conversion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedObject {
    Service(Service),
    /// An ExternalName Service: its id and `spec.externalName`.
    ExternalName(ObjectRef, String),
    EndpointSlice(EndpointSlice),
    Pod(Pod),
    Namespace(Namespace),
    Node(meshpath_model::Node),
    VirtualService(istio::VirtualService),
    /// Boxed: much larger than the other kinds.
    DestinationRule(Box<istio::DestinationRule>),
}

impl ParsedObject {
    /// Adds the object to `model` (replacing one with its key).
    pub fn insert_into(self, model: &mut meshpath_model::ClusterModel) {
        match self {
            ParsedObject::Service(s) => drop(model.services.insert(s.id.clone(), Arc::new(s))),
            ParsedObject::ExternalName(id, name) => drop(model.external_names.insert(id, name)),
            ParsedObject::EndpointSlice(s) => {
                drop(model.endpoint_slices.insert(s.id.clone(), Arc::new(s)))
            }
            ParsedObject::Pod(p) => drop(model.pods.insert(p.id.clone(), p)),
            ParsedObject::Namespace(n) => drop(model.namespaces.insert(n.id.clone(), n)),
            ParsedObject::Node(n) => drop(model.nodes.insert(n.id.clone(), n)),
            ParsedObject::VirtualService(v) => drop(model.virtual_services.insert(v.id.clone(), v)),
            ParsedObject::DestinationRule(d) => {
                drop(model.destination_rules.insert(d.id.clone(), *d))
            }
        }
    }

    pub fn key(&self) -> ObjectKey {
        match self {
            ParsedObject::Service(s) => ObjectKey::new(ObjectKind::Service, s.id.clone()),
            ParsedObject::ExternalName(id, _) => ObjectKey::new(ObjectKind::Service, id.clone()),
            ParsedObject::EndpointSlice(s) => {
                ObjectKey::new(ObjectKind::EndpointSlice, s.id.clone())
            }
            ParsedObject::Pod(p) => ObjectKey::new(ObjectKind::Pod, p.id.clone()),
            ParsedObject::Namespace(n) => ObjectKey::new(ObjectKind::Namespace, n.id.clone()),
            ParsedObject::Node(n) => ObjectKey::new(ObjectKind::Node, n.id.clone()),
            ParsedObject::VirtualService(v) => {
                ObjectKey::new(ObjectKind::VirtualService, v.id.clone())
            }
            ParsedObject::DestinationRule(d) => {
                ObjectKey::new(ObjectKind::DestinationRule, d.id.clone())
            }
        }
    }
}

/// Parses every YAML document of `text` (the contents of `file`, which is only used in errors and
/// logs). Empty documents are skipped; so are kinds other than `v1/Service`,
/// `discovery.k8s.io/v1/EndpointSlice`, `v1/Pod` and `networking.istio.io/{v1alpha3,v1beta1,v1}`
/// `VirtualService`/`DestinationRule` (logged at debug), and the items of a `v1/List` are read as
/// documents. Duplicate mapping keys are a YAML error. Istio fields meshpath ignores are logged as
/// warnings.
///
/// All or nothing: any error means `Err` with every error found (a YAML syntax error stops at
/// the first, since nothing after it can be trusted).
pub fn parse_file(file: &Path, text: &str) -> Result<Vec<ParsedObject>, Vec<SourceError>> {
    parse_file_noting(file, text).0
}

/// [`parse_file`], and the file's notices (Istio warnings, objects not programmed), each also
/// logged as a warning.
pub fn parse_file_noting(
    file: &Path,
    text: &str,
) -> (
    Result<Vec<ParsedObject>, Vec<SourceError>>,
    Vec<SourceNotice>,
) {
    let options = || {
        serde_saphyr::options! {
            duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
            with_snippet: false,
        }
    };
    let documents: Vec<serde_saphyr::Spanned<Value>> =
        match serde_saphyr::from_multiple_with_options(text, options()) {
            Ok(documents) => documents,
            Err(e) => return (Err(vec![SourceError::yaml(file.to_owned(), e)]), Vec::new()),
        };
    // The same documents as trees of positions, so that Istio's errors point at their field.
    let trees: Vec<serde_saphyr::Spanned<istio::validation::locate::Node>> =
        serde_saphyr::from_multiple_with_options(text, options())
            .ok()
            .filter(|t: &Vec<_>| t.len() == documents.len())
            .unwrap_or_default();

    let mut parser = Parser {
        file,
        objects: Vec::new(),
        errors: Vec::new(),
        notices: Vec::new(),
        tree: None,
    };
    for (i, document) in documents.into_iter().enumerate() {
        parser.tree = trees.get(i);
        parser.document(document.referenced.line(), document.value, true);
    }

    let mut seen = HashSet::new();
    for object in &parser.objects {
        let key = object.key();
        if !seen.insert(key.clone()) {
            let (file, first_file) = (file.to_owned(), file.to_owned());
            parser.errors.push(SourceError::Duplicate {
                file,
                object: key,
                first_file,
            });
        }
    }
    let result = if parser.errors.is_empty() {
        Ok(parser.objects)
    } else {
        Err(parser.errors)
    };
    (result, parser.notices)
}

struct Parser<'a> {
    file: &'a Path,
    objects: Vec<ParsedObject>,
    errors: Vec<SourceError>,
    notices: Vec<SourceNotice>,
    /// The positions of the document being parsed (`None` inside a `List`).
    tree: Option<&'a serde_saphyr::Spanned<istio::validation::locate::Node>>,
}

impl Parser<'_> {
    /// One document (or `List` item) starting at `line`.
    fn document(&mut self, line: u64, value: Value, lists_allowed: bool) {
        let not_an_object = |field, problem| SourceError::NotAnObject {
            file: self.file.to_owned(),
            line,
            field,
            problem,
        };
        let Value::Object(map) = &value else {
            self.errors.push(not_an_object(
                ".",
                Invalid::NotAMapping {
                    got: json_type(&value),
                },
            ));
            return;
        };
        let api_version = match map.get("apiVersion") {
            Some(Value::String(v)) => v.clone(),
            None | Some(Value::Null) => {
                return self
                    .errors
                    .push(not_an_object("apiVersion", Invalid::Required))
            }
            Some(_) => {
                return self
                    .errors
                    .push(not_an_object("apiVersion", Invalid::NotAString))
            }
        };
        let kind = match map.get("kind") {
            Some(Value::String(k)) => k.clone(),
            None | Some(Value::Null) => {
                return self.errors.push(not_an_object("kind", Invalid::Required))
            }
            Some(_) => return self.errors.push(not_an_object("kind", Invalid::NotAString)),
        };

        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => {
                let key = object_key(ObjectKind::Service, &value);
                if let Some(svc) = self.decode::<core::Service>(line, &key, value) {
                    match convert::external_name(&svc) {
                        Some(result) => self.converted(line, &key, result, |(id, name)| {
                            ParsedObject::ExternalName(id, name)
                        }),
                        None => {
                            let result = convert::service(&svc);
                            self.converted(line, &key, result, ParsedObject::Service);
                        }
                    }
                }
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                let key = object_key(ObjectKind::EndpointSlice, &value);
                if let Some(slice) = self.decode::<discovery::EndpointSlice>(line, &key, value) {
                    let result = convert::endpoint_slice(&slice);
                    self.converted(line, &key, result, ParsedObject::EndpointSlice);
                }
            }
            ("v1", "Pod") => {
                let key = object_key(ObjectKind::Pod, &value);
                if let Some(pod) = self.decode::<core::Pod>(line, &key, value) {
                    let result = convert::pod(&pod).map(Converted::Accepted);
                    self.converted(line, &key, result, ParsedObject::Pod);
                }
            }
            ("v1", "Namespace") => {
                let key = object_key(ObjectKind::Namespace, &value);
                if let Some(ns) = self.decode::<core::Namespace>(line, &key, value) {
                    let result = convert::namespace(&ns).map(Converted::Accepted);
                    self.converted(line, &key, result, ParsedObject::Namespace);
                }
            }
            ("v1", "Node") => {
                let key = object_key(ObjectKind::Node, &value);
                if let Some(node) = self.decode::<core::Node>(line, &key, value) {
                    let result = convert::node(&node).map(Converted::Accepted);
                    self.converted(line, &key, result, ParsedObject::Node);
                }
            }
            (v, "VirtualService") if istio::is_supported_api_version(v) => {
                let key = object_key(ObjectKind::VirtualService, &value);
                let result = istio::virtual_service(value);
                self.istio(line, &key, result, |mut vs, origin| {
                    vs.origin = Some(origin);
                    ParsedObject::VirtualService(vs)
                });
            }
            (v, "DestinationRule") if istio::is_supported_api_version(v) => {
                let key = object_key(ObjectKind::DestinationRule, &value);
                let result = istio::destination_rule(value);
                self.istio(line, &key, result, |mut dr, origin| {
                    dr.origin = Some(origin);
                    ParsedObject::DestinationRule(Box::new(dr))
                });
            }
            ("v1", "List") if lists_allowed => {
                let Some(Value::Array(items)) = value.get("items") else {
                    return self.errors.push(not_an_object("items", Invalid::Required));
                };
                self.tree = None;
                for item in items.clone() {
                    self.document(line, item, false);
                }
            }
            (_, "Service" | "EndpointSlice" | "Pod" | "Namespace" | "Node") => self
                .unsupported_api_version(
                    line,
                    &value,
                    api_version,
                    &kind,
                    "v1, or discovery.k8s.io/v1 for EndpointSlice",
                ),
            (v, "VirtualService" | "DestinationRule") if v.starts_with(istio::GROUP) => self
                .unsupported_api_version(
                    line,
                    &value,
                    api_version,
                    &kind,
                    "networking.istio.io/v1alpha3, v1beta1 or v1",
                ),
            _ => tracing::debug!(
                file = %self.file.display(),
                api_version,
                kind,
                name = name_of(&value),
                "skipping object of a kind meshpath does not use"
            ),
        }
    }

    /// An invalid object's error, at its field's line and column when they can be located.
    fn invalid(&mut self, line: u64, source: ConvertError) {
        let (line, column) = self.position(line, &source.field);
        self.errors.push(SourceError::Invalid {
            file: self.file.to_owned(),
            line,
            column,
            source: Box::new(source),
        });
    }

    /// Line and column of `field` in the document being parsed; the document's line (and no
    /// column) inside a `List`, whose items have no positions of their own.
    pub(super) fn position(&self, line: u64, field: &str) -> (u64, Option<u64>) {
        match self.tree {
            Some(tree) => {
                let (l, c) = istio::validation::locate::locate(tree, field);
                (l, Some(c))
            }
            None => (line, None),
        }
    }

    /// The typed k8s-openapi object, or a [`SourceError::Decode`] naming the field.
    fn decode<T: DeserializeOwned>(
        &mut self,
        line: u64,
        object: &ObjectKey,
        value: Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(typed) => Some(typed),
            Err(e) => {
                let path = e.path().to_string();
                let source = e.into_inner();
                let (file, object) = (self.file.to_owned(), object.clone());
                self.errors.push(SourceError::Decode {
                    file,
                    line,
                    object,
                    path,
                    source,
                });
                None
            }
        }
    }

    /// An Istio object: its warnings logged with the file, its errors in the file's errors.
    /// `origin` (`file:line`) is stored in the object so that errors found when compiling can
    /// point at it.
    fn istio<T>(
        &mut self,
        line: u64,
        object: &ObjectKey,
        result: Result<(T, Vec<istio::Warning>), istio::Error>,
        wrap: impl FnOnce(T, String) -> ParsedObject,
    ) {
        match result {
            Ok((converted, warnings)) => {
                for warning in warnings {
                    tracing::warn!(file = %self.file.display(), line, %object, "{object}: {warning}");
                    let (line, column) = self.position(line, warning.field());
                    self.notices.push(SourceNotice {
                        file: self.file.to_owned(),
                        line,
                        column,
                        object: Some(object.clone()),
                        kind: NoticeKind::Istio(warning),
                    });
                }
                let origin = format!("{}:{line}", self.file.display());
                self.objects.push(wrap(converted, origin));
            }
            Err(istio::Error::Decode(e)) => self.errors.push(SourceError::Decode {
                file: self.file.to_owned(),
                line,
                object: object.clone(),
                path: e.path,
                source: e.source,
            }),
            Err(istio::Error::Invalid(source)) => self.invalid(line, source),
            Err(istio::Error::Istio(all)) => {
                for source in all {
                    self.invalid(line, source);
                }
            }
        }
    }

    fn converted<T>(
        &mut self,
        line: u64,
        object: &ObjectKey,
        result: Result<Converted<T>, ConvertError>,
        wrap: impl FnOnce(T) -> ParsedObject,
    ) {
        match result {
            Ok(Converted::Accepted(object)) => self.objects.push(wrap(object)),
            Ok(Converted::Skipped(reason)) => {
                let file = self.file.display();
                match reason {
                    SkipReason::AddressType(_) => {
                        tracing::warn!(file = %file, line, %object, %reason, "skipping object")
                    }
                    SkipReason::ExternalName | SkipReason::Headless => {
                        tracing::debug!(file = %file, line, %object, %reason, "skipping object")
                    }
                }
                self.notices.push(SourceNotice {
                    file: self.file.to_owned(),
                    line,
                    column: None,
                    object: Some(object.clone()),
                    kind: NoticeKind::Skipped(reason),
                });
            }
            Err(source) => self.invalid(line, source),
        }
    }
}

/// kind + namespace/name as far as the untyped document tells (for errors before typing).
fn object_key(kind: ObjectKind, value: &Value) -> ObjectKey {
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty());
    ObjectKey::new(
        kind,
        ObjectRef::new(namespace.unwrap_or("default"), name_of(value)),
    )
}

fn name_of(value: &Value) -> &str {
    value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

mod unsupported;

#[cfg(test)]
mod tests;
