//! One problem `meshpath validate` reports, shaped as `istioctl analyze` users read them: a
//! severity, an Istio analyzer code where one exists, and the position of the offending field.

use std::fmt;
use std::path::PathBuf;

use meshpath_compile::l7::L7Error;
use meshpath_compile::CompileError;
use meshpath_model::istio::IstioInvalid;
use meshpath_model::Invalid;
use meshpath_source::manifests::{locate_field, NoticeKind, SourceNotice};
use meshpath_source::SourceError;

/// Istio's analyzer levels. Only errors make `meshpath validate` fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "Error",
            Severity::Warning => "Warning",
            Severity::Info => "Info",
        })
    }
}

/// Istio analyzer codes meshpath's findings correspond to.
pub mod code {
    /// ReferencedResourceNotFound: a host or subset that is referenced but not defined.
    pub const REFERENCED_RESOURCE_NOT_FOUND: &str = "IST0101";
    /// SchemaValidationError: the object fails Istio's (or Kubernetes') validation.
    pub const SCHEMA_VALIDATION_ERROR: &str = "IST0106";
    /// VirtualServiceDestinationPortSelectorRequired: a multi-port destination without a port.
    pub const PORT_SELECTOR_REQUIRED: &str = "IST0112";
    /// InvalidRegexp.
    pub const INVALID_REGEXP: &str = "IST0122";
    /// Deprecated.
    pub const DEPRECATED: &str = "IST0002";
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Option<&'static str>,
    pub file: Option<PathBuf>,
    pub line: Option<u64>,
    pub column: Option<u64>,
    /// `VirtualService default/reviews`.
    pub object: Option<String>,
    /// `spec.http[0].route[0].destination.subset`.
    pub field: Option<String>,
    /// What is wrong, after the position (object and field included, as the agent logs it).
    pub message: String,
}

impl Diagnostic {
    fn new(severity: Severity, code: Option<&'static str>, message: String) -> Diagnostic {
        Diagnostic {
            severity,
            code,
            file: None,
            line: None,
            column: None,
            object: None,
            field: None,
            message,
        }
    }

    /// A file that cannot be listed or read before anything is parsed.
    pub fn io(path: PathBuf, error: &std::io::Error) -> Diagnostic {
        Diagnostic {
            file: Some(path),
            ..Diagnostic::new(Severity::Error, None, error.to_string())
        }
    }

    pub fn from_source(error: &SourceError) -> Diagnostic {
        let schema = |problem: &Invalid| match problem {
            Invalid::Istio(IstioInvalid::BadRegex { .. }) => code::INVALID_REGEXP,
            _ => code::SCHEMA_VALIDATION_ERROR,
        };
        let code = match error {
            SourceError::Invalid { source, .. } => Some(schema(&source.problem)),
            SourceError::ApiInvalid { source } => Some(schema(&source.problem)),
            SourceError::Decode { .. }
            | SourceError::ApiDecode { .. }
            | SourceError::NotAnObject { .. } => Some(code::SCHEMA_VALIDATION_ERROR),
            _ => None,
        };
        let text = error.to_string();
        let file = error.file().map(ToOwned::to_owned);
        let message = match &file {
            Some(f) => strip_prefix(&text, &f.display().to_string()),
            None => text,
        };
        Diagnostic {
            file,
            line: error.line(),
            column: error.column(),
            object: error.object().map(ToString::to_string),
            field: error.field().map(ToOwned::to_owned),
            ..Diagnostic::new(Severity::Error, code, message)
        }
    }

    pub fn from_notice(notice: &SourceNotice) -> Diagnostic {
        let (severity, code) = match &notice.kind {
            NoticeKind::Istio(w) if w.is_istio() && w.to_string().contains("deprecated") => {
                (Severity::Warning, Some(code::DEPRECATED))
            }
            NoticeKind::Istio(_) | NoticeKind::UnsupportedApiVersion { .. } => {
                (Severity::Warning, None)
            }
            NoticeKind::Skipped(_) => (Severity::Info, None),
        };
        let message = match &notice.object {
            Some(object) => format!("{object}: {}", notice.kind),
            None => notice.kind.to_string(),
        };
        Diagnostic {
            file: Some(notice.file.clone()),
            line: Some(notice.line),
            column: notice.column,
            object: notice.object.as_ref().map(ToString::to_string),
            field: notice.field().map(ToOwned::to_owned),
            ..Diagnostic::new(severity, code, message)
        }
    }

    pub fn from_compile(error: &CompileError) -> Diagnostic {
        let text = error.to_string();
        let mut d = Diagnostic::new(Severity::Error, None, text.clone());
        d.object = error.service().map(|s| format!("Service {s}"));
        if let Some((file, line)) = error.origin().and_then(split_origin) {
            d.message = strip_prefix(&text, error.origin().unwrap_or_default());
            d.file = Some(file);
            d.line = Some(line);
        }
        d
    }

    /// `text` is the file's contents when it could be read, to point at the field.
    pub fn from_l7(
        error: &L7Error,
        text: impl FnOnce(&std::path::Path) -> Option<String>,
    ) -> Diagnostic {
        // Istio accepts a route to a subset no DestinationRule defines yet (it may be applied
        // next): its analyzer reports it, the API server does not refuse it.
        let (severity, code) = match error {
            L7Error::UnknownSubset { .. } | L7Error::WildcardDestination { .. } => {
                (Severity::Warning, code::REFERENCED_RESOURCE_NOT_FOUND)
            }
            L7Error::UnknownHost { .. } | L7Error::UnknownPort { .. } => {
                (Severity::Error, code::REFERENCED_RESOURCE_NOT_FOUND)
            }
            L7Error::PortRequired { .. } => (Severity::Error, code::PORT_SELECTOR_REQUIRED),
        };
        let full = error.to_string();
        let mut d = Diagnostic::new(severity, Some(code), full.clone());
        d.field = Some(error.field().to_owned());
        if let Some((file, line)) = split_origin(error.origin()) {
            d.message = strip_prefix(&full, error.origin());
            let position = text(&file).and_then(|t| locate_field(&t, line, error.field()));
            (d.line, d.column) = match position {
                Some((l, c)) => (Some(l), Some(c)),
                None => (Some(line), None),
            };
            d.file = Some(file);
        }
        d.object = Some(format!("VirtualService {}", error.virtual_service()));
        d
    }

    /// One line: `FILE:LINE:COL: Severity [CODE] MESSAGE`.
    pub fn to_line(&self) -> String {
        let mut out = String::new();
        if let Some(file) = &self.file {
            out.push_str(&file.display().to_string());
            if let Some(line) = self.line {
                out.push_str(&format!(":{line}"));
                if let Some(column) = self.column {
                    out.push_str(&format!(":{column}"));
                }
            }
            out.push_str(": ");
        }
        out.push_str(&self.severity.to_string());
        if let Some(code) = self.code {
            out.push_str(&format!(" [{code}]"));
        }
        out.push(' ');
        out.push_str(&self.message);
        out
    }

    /// As `istioctl analyze -o json` names its fields (`code`, `level`, `message`, `origin`,
    /// `reference`), with the position spelled out.
    pub fn to_json(&self) -> serde_json::Value {
        let reference = self.file.as_ref().map(|f| match self.line {
            Some(line) => format!("{}:{line}", f.display()),
            None => f.display().to_string(),
        });
        serde_json::json!({
            "code": self.code,
            "level": self.severity.to_string(),
            "message": self.message,
            "origin": self.object,
            "reference": reference,
            "file": self.file.as_ref().map(|f| f.display().to_string()),
            "line": self.line,
            "column": self.column,
            "field": self.field,
        })
    }
}

fn strip_prefix(text: &str, prefix: &str) -> String {
    text.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(text)
        .to_owned()
}

/// `file:line` → (file, line).
fn split_origin(origin: &str) -> Option<(PathBuf, u64)> {
    let (file, line) = origin.rsplit_once(':')?;
    Some((PathBuf::from(file), line.parse().ok()?))
}
