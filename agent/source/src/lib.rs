//! Sources of cluster state. A source produces a [`ClusterModel`](meshpath_model::ClusterModel) (the
//! in-memory model); turning that into map contents is somebody else's job.
//!
//! - [`convert`]: k8s-openapi objects → model types, with Kubernetes' defaulting and validation.
//!   Shared by every source.
//! - [`manifests`]: a directory of YAML manifests, watched for changes.
//! - [`istio`]: Istio's VirtualService and DestinationRule YAML → model types.
//! - [`kube`]: the Kubernetes API, watched with kube-rs ([`sync_metrics`]: how that sync goes).
//! - [`error`]: [`SourceError`], which names file, object and field.
//!
//! Sources publish through `tokio::sync::watch` channels: a `watch::Sender<Arc<ClusterModel>>`
//! holding the latest model and a `watch::Sender<Arc<SourceStatus>>` holding its errors.

pub mod convert;
pub mod error;
pub mod istio;
#[cfg(feature = "kube")]
pub mod kube;
pub mod manifests;
pub mod sync_metrics;

pub use error::{ConvertError, Invalid, ObjectKey, ObjectKind, SourceError};
pub use manifests::{load_dir, parse_file, ManifestState, ManifestWatcher, ParsedObject};

/// What a source has to say about its inputs besides the model.
#[derive(Debug, Default)]
pub struct SourceStatus {
    /// Everything wrong right now. Empty when every input is good; otherwise the model holds the
    /// last good version of each input that has errors.
    pub errors: Vec<SourceError>,
    /// Inputs seen (manifest files), good or not.
    pub files: usize,
    /// Objects in the model.
    pub objects: usize,
}

impl SourceStatus {
    /// Equal counts and errors that read the same (errors are not `PartialEq`: some wrap
    /// `io::Error`).
    pub fn same_as(&self, other: &SourceStatus) -> bool {
        self.files == other.files
            && self.objects == other.objects
            && self.errors.len() == other.errors.len()
            && self
                .errors
                .iter()
                .zip(&other.errors)
                .all(|(a, b)| a.to_string() == b.to_string())
    }
}
