//! Istio's `networking.istio.io` VirtualService and DestinationRule as meshpath's input: users
//! apply the YAML they already have, unchanged.
//!
//! - `schema`: the YAML shape (v1alpha3, v1beta1 and v1 share it), decoded with the paths of
//!   fields of the wrong type and of fields meshpath ignores (`decode`).
//! - [`virtual_service`], [`destination_rule`]: document → [`model`] types (`meshpath-model`),
//!   with Istio's validation; errors are [`ConvertError`](crate::ConvertError)s naming object and
//!   field (the problem is an [`IstioInvalid`] where no shared [`Invalid`](crate::Invalid) fits).
//! - [`validation`]: Istio's own rules, checked on the document first so that every problem of
//!   an object is reported, in Istio's words.

mod convert;
mod decode;
mod duration;
mod schema;
pub mod validation;

pub use convert::{destination_rule, virtual_service, Error};
pub use meshpath_model::istio::{model, DestinationRule, IstioInvalid, VirtualService, Warning};

/// The API group of both kinds.
pub const GROUP: &str = "networking.istio.io";
/// The versions served with one schema.
pub const VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];

/// Whether `api_version` is `networking.istio.io/{v1alpha3,v1beta1,v1}`.
pub fn is_supported_api_version(api_version: &str) -> bool {
    api_version
        .strip_prefix(GROUP)
        .and_then(|v| v.strip_prefix('/'))
        .is_some_and(|v| VERSIONS.contains(&v))
}

#[cfg(test)]
mod tests;
