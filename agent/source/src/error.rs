//! Errors of every source: what was wrong, where (file, object, field), and why.
//!
//! [`ConvertError`] (in `meshpath-model`) is what the conversion into the model reports; it knows
//! the object and the field but not where the object came from. [`SourceError`] adds the origin (a
//! manifest file today) and covers the failures that happen before conversion (reading, YAML,
//! typing).

use std::path::PathBuf;

pub use meshpath_model::error::{ConvertError, Invalid, ObjectKey, ObjectKind};

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
