//! Errors of every source: what was wrong, where (file, object, field), and why.
//!
//! [`ConvertError`] is what the k8s-openapi → model conversion reports; it knows the object and
//! the field but not where the object came from. [`SourceError`] adds the origin (a manifest file
//! today) and covers the failures that happen before conversion (reading, YAML, typing).

use std::fmt;
use std::net::AddrParseError;
use std::path::PathBuf;

use crate::model::ObjectRef;

/// The kinds of object a source turns into model types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    Pod,
    VirtualService,
    DestinationRule,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Pod => "Pod",
            ObjectKind::VirtualService => "VirtualService",
            ObjectKind::DestinationRule => "DestinationRule",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// kind + namespace/name: what must be unique across all of a source's inputs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    /// The name is empty when the object has none (which is itself an error).
    pub id: ObjectRef,
}

impl ObjectKey {
    pub fn new(kind: ObjectKind, id: ObjectRef) -> Self {
        Self { kind, id }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.id.name.is_empty() {
            write!(f, "{} {}/<unnamed>", self.kind, self.id.namespace)
        } else {
            write!(f, "{} {}", self.kind, self.id)
        }
    }
}

/// Why a field's value is not acceptable. Display is the tail of the message, after the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("required")]
    Required,
    #[error("must be a mapping (a Kubernetes object), got {got}")]
    NotAMapping { got: &'static str },
    #[error("must be a string")]
    NotAString,
    #[error("must not be empty")]
    Empty,
    #[error("must be between {min} and {max}, got {got}")]
    OutOfRange { min: i64, max: i64, got: i64 },
    #[error("{value:?} is not a valid IPv4 address")]
    BadIp {
        value: String,
        #[source]
        source: AddrParseError,
    },
    #[error("IPv6 address {value:?} is not yet supported (only IPv4)")]
    Ipv6NotSupported { value: String },
    #[error("{value:?} is not supported (only {supported})")]
    NotSupported {
        value: String,
        supported: &'static str,
    },
    #[error("must be one of {expected}, got {value:?}")]
    NotOneOf {
        value: String,
        expected: &'static str,
    },
    #[error("invalid port name {value:?}: {reason}")]
    BadPortName { value: String, reason: &'static str },
    #[error("a {service_type} Service needs at least one port")]
    NoPorts { service_type: String },
    #[error("required when there is more than one port")]
    NameRequiredForMultiplePorts,
    #[error("duplicate value {value:?} (also at {first})")]
    Duplicate { value: String, first: String },
    #[error("{value:?} does not match spec.clusterIP {cluster_ip:?}")]
    ClusterIpsMismatch { value: String, cluster_ip: String },
    /// Problems only Istio objects have (durations, regexes, weights, ...).
    #[error(transparent)]
    Istio(crate::istio::IstioInvalid),
}

/// A k8s-openapi object that cannot become a model object. Display:
/// `Service default/web: spec.ports[0].port: must be between 1 and 65535, got 0`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {problem}")]
pub struct ConvertError {
    pub object: ObjectKey,
    /// Field path in the object as written in YAML/JSON, e.g. `spec.ports[0].targetPort`.
    pub field: String,
    /// Boxed to keep `Result<_, ConvertError>` small.
    pub problem: Box<Invalid>,
}

/// Everything that can go wrong reading a source. Each variant names the file; those that concern
/// one object name it too (see [`SourceError::object`], [`SourceError::field`]).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The manifests directory itself cannot be listed.
    #[error("{}: cannot list directory: {source}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The manifests directory cannot be watched (it does not exist, inotify limits, ...).
    #[error("{}: cannot watch directory: {source}", dir.display())]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    /// A manifest file cannot be read (permissions, not UTF-8, ...).
    #[error("{}: cannot read file: {source}", file.display())]
    ReadFile {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML (syntax, duplicate mapping keys, tabs, unknown alias, ...).
    #[error("{}: invalid YAML: {}", file.display(), render_yaml_error(source))]
    Yaml {
        file: PathBuf,
        line: Option<u64>,
        column: Option<u64>,
        /// Boxed: it is large, and `SourceError` travels in `Result`s.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A YAML document that is not a Kubernetes object (not a mapping, no `apiVersion`/`kind`).
    #[error("{}: document at line {line}: {field}: {problem}", file.display())]
    NotAnObject {
        file: PathBuf,
        line: u64,
        field: &'static str,
        problem: Invalid,
    },
    /// The object does not fit its k8s-openapi type (wrong type, missing required field).
    #[error("{}: {object}: {path}: {source}", file.display())]
    Decode {
        file: PathBuf,
        /// Line of the YAML document holding the object.
        line: u64,
        object: ObjectKey,
        /// Path of the offending field, e.g. `spec.ports[0].port`.
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// The object is well-typed but not valid (see [`ConvertError`]).
    #[error("{}: {source}", file.display())]
    Invalid {
        file: PathBuf,
        /// The document's line, or the field's when `column` is known.
        line: u64,
        /// The offending field's column, when it could be located in the text.
        column: Option<u64>,
        /// Boxed: with the position, the error would be large, and it travels in `Result`s.
        #[source]
        source: Box<ConvertError>,
    },
    /// The same kind + namespace/name is defined twice. `file` is the definition that was
    /// dropped, `first_file` the one that was kept (the same file when it repeats itself).
    #[error("{}: {object}: already defined in {}; ignoring this definition", file.display(), first_file.display())]
    Duplicate {
        file: PathBuf,
        object: ObjectKey,
        first_file: PathBuf,
    },
    /// An object read from the Kubernetes API does not fit its type (only Istio objects, whose
    /// CRDs may accept anything under `spec`; the API server validates the built-in kinds).
    #[error("kube-apiserver: {object}: {path}: {source}")]
    ApiDecode {
        object: ObjectKey,
        path: String,
        /// Shared: the Kubernetes source keeps the error while the object stays broken and
        /// publishes it with every status.
        #[source]
        source: std::sync::Arc<serde_json::Error>,
    },
    /// An object read from the Kubernetes API is well-typed but not valid.
    #[error("kube-apiserver: {source}")]
    ApiInvalid {
        #[source]
        source: ConvertError,
    },
}

impl SourceError {
    /// The file (or directory, for [`SourceError::ReadDir`]) the error is about; `None` for
    /// objects read from the Kubernetes API.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            SourceError::ReadDir { dir, .. } | SourceError::Watch { dir, .. } => Some(dir),
            SourceError::ReadFile { file, .. }
            | SourceError::Yaml { file, .. }
            | SourceError::NotAnObject { file, .. }
            | SourceError::Decode { file, .. }
            | SourceError::Invalid { file, .. }
            | SourceError::Duplicate { file, .. } => Some(file),
            SourceError::ApiDecode { .. } | SourceError::ApiInvalid { .. } => None,
        }
    }

    /// A copy of an error about an API object (the Kubernetes source republishes them);
    /// `None` for the file errors, which hold non-clonable I/O and parser errors.
    pub fn try_clone(&self) -> Option<SourceError> {
        match self {
            SourceError::ApiDecode {
                object,
                path,
                source,
            } => Some(SourceError::ApiDecode {
                object: object.clone(),
                path: path.clone(),
                source: source.clone(),
            }),
            SourceError::ApiInvalid { source } => Some(SourceError::ApiInvalid {
                source: source.clone(),
            }),
            _ => None,
        }
    }

    /// The object the error is about, when there is one.
    pub fn object(&self) -> Option<&ObjectKey> {
        match self {
            SourceError::Decode { object, .. }
            | SourceError::Duplicate { object, .. }
            | SourceError::ApiDecode { object, .. } => Some(object),
            SourceError::Invalid { source, .. } => Some(&source.object),
            SourceError::ApiInvalid { source } => Some(&source.object),
            _ => None,
        }
    }

    /// The field path the error is about, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            SourceError::NotAnObject { field, .. } => Some(field),
            SourceError::Decode { path, .. } | SourceError::ApiDecode { path, .. } => Some(path),
            SourceError::Invalid { source, .. } => Some(&source.field),
            SourceError::ApiInvalid { source } => Some(&source.field),
            _ => None,
        }
    }

    /// The line in the file: the error's own for YAML errors, else where the document starts.
    pub fn line(&self) -> Option<u64> {
        match self {
            SourceError::Yaml { line, .. } => *line,
            SourceError::NotAnObject { line, .. }
            | SourceError::Decode { line, .. }
            | SourceError::Invalid { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// The column of the line, when known (YAML errors, located Istio fields).
    pub fn column(&self) -> Option<u64> {
        match self {
            SourceError::Yaml { column, .. } => *column,
            SourceError::Invalid { column, .. } => *column,
            _ => None,
        }
    }

    pub(crate) fn yaml(file: PathBuf, source: serde_saphyr::Error) -> Self {
        let location = source.location();
        SourceError::Yaml {
            file,
            line: location.map(|l| l.line()),
            column: location.map(|l| l.column()),
            source: Box::new(source),
        }
    }
}

/// Logs `error` at error level with its file, object, field and line as structured fields.
pub(crate) fn log_error(error: &SourceError) {
    let object = error.object().map(ToString::to_string);
    let file = error.file().map(|f| f.display().to_string());
    tracing::error!(
        file = file.as_deref(),
        object = object.as_deref(),
        field = error.field(),
        line = error.line(),
        "{error}"
    );
}

/// serde-saphyr's user-facing wording: "duplicate mapping key `a` is not allowed here at line 3,
/// column 1" rather than its developer wording that suggests changing parser options.
fn render_yaml_error(error: &serde_saphyr::Error) -> String {
    error
        .without_snippet()
        .render_with_formatter(&serde_saphyr::UserMessageFormatter)
}
