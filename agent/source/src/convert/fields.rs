//! Field-level helpers shared by the conversions: errors that name object and field, and the
//! Kubernetes rules for ports, protocols, addresses and port names.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use meshpath_model::{ObjectRef, Protocol};

use crate::error::{ConvertError, Invalid, ObjectKey, ObjectKind};

/// Context for one object: builds errors that name it.
pub(super) struct Ctx {
    pub(super) object: ObjectKey,
}

impl Ctx {
    pub(super) fn new(kind: ObjectKind, meta: &ObjectMeta) -> Result<Self, ConvertError> {
        let namespace = match meta.namespace.as_deref() {
            None | Some("") => "default",
            Some(ns) => ns,
        };
        let name = meta.name.clone().unwrap_or_default();
        let ctx = Ctx {
            object: ObjectKey::new(kind, ObjectRef::new(namespace, name)),
        };
        if ctx.object.id.name.is_empty() {
            return Err(ctx.err("metadata.name", Invalid::Required));
        }
        Ok(ctx)
    }

    pub(super) fn id(&self) -> ObjectRef {
        self.object.id.clone()
    }

    pub(super) fn err(&self, field: impl Into<String>, problem: Invalid) -> ConvertError {
        ConvertError {
            object: self.object.clone(),
            field: field.into(),
            problem: Box::new(problem),
        }
    }

    pub(super) fn port(&self, field: impl Into<String>, value: i32) -> Result<u16, ConvertError> {
        match u16::try_from(value) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(self.err(
                field,
                Invalid::OutOfRange {
                    min: 1,
                    max: 65535,
                    got: value.into(),
                },
            )),
        }
    }

    /// `protocol`, TCP when absent.
    pub(super) fn protocol(
        &self,
        field: impl Into<String>,
        value: Option<&str>,
    ) -> Result<Protocol, ConvertError> {
        match value {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some(other @ "SCTP") => Err(self.err(
                field,
                Invalid::NotSupported {
                    value: other.to_owned(),
                    supported: "TCP and UDP",
                },
            )),
            Some(other) => Err(self.err(
                field,
                Invalid::NotOneOf {
                    value: other.to_owned(),
                    expected: "TCP, UDP, SCTP",
                },
            )),
        }
    }

    pub(super) fn ipv4(
        &self,
        field: impl Into<String>,
        value: &str,
    ) -> Result<Ipv4Addr, ConvertError> {
        match value.parse::<Ipv4Addr>() {
            Ok(ip) => Ok(ip),
            Err(_) if value.parse::<Ipv6Addr>().is_ok() => Err(self.err(
                field,
                Invalid::Ipv6NotSupported {
                    value: value.to_owned(),
                },
            )),
            Err(source) => Err(self.err(
                field,
                Invalid::BadIp {
                    value: value.to_owned(),
                    source,
                },
            )),
        }
    }

    /// A named port (`targetPort`, `containerPort` names): Kubernetes' IANA_SVC_NAME rules.
    pub(super) fn port_name(
        &self,
        field: impl Into<String>,
        value: &str,
    ) -> Result<String, ConvertError> {
        let reason = if value.len() > 15 {
            Some("must be at most 15 characters")
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            Some("must consist of lower-case letters, digits and '-'")
        } else if !value.bytes().any(|b| b.is_ascii_lowercase()) {
            Some("must contain a letter (write a port number without quotes)")
        } else if value.starts_with('-') || value.ends_with('-') || value.contains("--") {
            Some("'-' must not start or end it nor be doubled")
        } else {
            None
        };
        match reason {
            None => Ok(value.to_owned()),
            Some(reason) => Err(self.err(
                field,
                Invalid::BadPortName {
                    value: value.to_owned(),
                    reason,
                },
            )),
        }
    }
}

/// Tracks values that must be unique within a list (port names, ...).
#[derive(Default)]
pub(super) struct Unique(HashMap<String, String>);

impl Unique {
    pub(super) fn check(
        &mut self,
        ctx: &Ctx,
        field: String,
        value: String,
    ) -> Result<(), ConvertError> {
        if let Some(first) = self.0.get(&value) {
            return Err(ctx.err(
                field,
                Invalid::Duplicate {
                    value,
                    first: first.clone(),
                },
            ));
        }
        self.0.insert(value, field);
        Ok(())
    }
}

pub(super) fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.is_empty())
}

pub(super) fn string_map(map: &Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    map.clone().unwrap_or_default()
}
