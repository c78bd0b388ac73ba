//! The manifests source: a directory of Kubernetes YAML (`meshpath agent --manifests DIR`).
//!
//! - [`parse_file`]: one file's text → its objects, or all its errors (YAML via serde-saphyr with
//!   duplicate keys rejected, then k8s-openapi types, then [`crate::convert`]).
//! - [`load_dir`]: the directory → the model, keeping each file's last good objects.
//! - [`ManifestWatcher`]: `load_dir` again whenever the directory changes, publishing to watch
//!   channels.

mod notice;
mod parse;
mod position;
mod state;
mod watch;

pub use notice::{NoticeKind, SourceNotice};
pub use parse::{parse_file, parse_file_noting, ParsedObject};
pub use position::locate_field;
pub use state::{is_manifest_name, load_dir, load_paths, Load, ManifestState};
pub use watch::{ManifestWatcher, DEBOUNCE, MAX_DELAY};
