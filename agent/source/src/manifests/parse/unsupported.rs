//! Objects of a kind meshpath reads, at an apiVersion it does not: skipped, not refused.

use serde_json::Value;

use super::{name_of, object_key, Parser};
use crate::error::ObjectKind;
use crate::manifests::notice::{NoticeKind, SourceNotice};

impl Parser<'_> {
    /// A kind meshpath reads, at an apiVersion it does not: skipped, logged and noted.
    pub(super) fn unsupported_api_version(
        &mut self,
        line: u64,
        value: &Value,
        api_version: String,
        kind: &str,
        want: &'static str,
    ) {
        tracing::warn!(
            file = %self.file.display(),
            api_version,
            kind,
            name = name_of(value),
            "skipping object: unsupported apiVersion (want {want})"
        );
        let object = match kind {
            "Service" => Some(ObjectKind::Service),
            "EndpointSlice" => Some(ObjectKind::EndpointSlice),
            "Pod" => Some(ObjectKind::Pod),
            "Namespace" => Some(ObjectKind::Namespace),
            "Node" => Some(ObjectKind::Node),
            "VirtualService" => Some(ObjectKind::VirtualService),
            "DestinationRule" => Some(ObjectKind::DestinationRule),
            _ => None,
        }
        .map(|k| object_key(k, value));
        let (line, column) = self.position(line, "apiVersion");
        self.notices.push(SourceNotice {
            file: self.file.to_owned(),
            line,
            column,
            object,
            kind: NoticeKind::UnsupportedApiVersion { api_version, want },
        });
    }
}
