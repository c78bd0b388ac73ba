//! What a manifest file says that is not an error: the object is applied (or deliberately not
//! programmed), and the user should hear about it. The agent logs these; `meshpath validate`
//! prints them with their file, line and column.

use std::fmt;
use std::path::PathBuf;

use meshpath_model::istio::Warning;

use crate::convert::SkipReason;
use crate::error::ObjectKey;

/// One notice, with where it points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceNotice {
    pub file: PathBuf,
    /// Line of the field (when its position is known), else of the object's document.
    pub line: u64,
    pub column: Option<u64>,
    pub object: Option<ObjectKey>,
    pub kind: NoticeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// A warning from the Istio conversion: Istio's own, or a field meshpath accepts without
    /// enforcing it.
    Istio(Warning),
    /// A valid object that meshpath does not program (ExternalName, headless, IPv6 slices).
    Skipped(SkipReason),
    /// A known kind at an apiVersion meshpath does not read.
    UnsupportedApiVersion {
        api_version: String,
        want: &'static str,
    },
}

impl SourceNotice {
    /// The field the notice is about, when it is about one.
    pub fn field(&self) -> Option<&str> {
        match &self.kind {
            NoticeKind::Istio(w) => Some(w.field()),
            NoticeKind::Skipped(_) => Some("spec"),
            NoticeKind::UnsupportedApiVersion { .. } => Some("apiVersion"),
        }
    }
}

impl fmt::Display for NoticeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoticeKind::Istio(w) => w.fmt(f),
            NoticeKind::Skipped(reason) => write!(f, "spec: {reason}"),
            NoticeKind::UnsupportedApiVersion { api_version, want } => write!(
                f,
                "apiVersion: {api_version:?} is not read by meshpath (want {want}); object skipped"
            ),
        }
    }
}
