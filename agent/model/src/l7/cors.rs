//! A route's `corsPolicy` as the proxy applies it: Istio's translation into Envoy's CORS
//! policy (lists joined with `,`, `maxAge` in whole seconds), evaluated the way Envoy's CORS
//! filter does.

use super::StringMatch;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CorsPolicy {
    /// `allowOrigins` (and the deprecated `allowOrigin`, as exact matches). An origin is
    /// allowed when a matcher matches it, or matches the literal `*`.
    pub allow_origins: Vec<StringMatch>,
    /// `Access-Control-Allow-Methods` of a preflight answer; empty: not sent; `*`: the
    /// requested method echoed.
    pub allow_methods: String,
    /// `Access-Control-Allow-Headers`, likewise (`*` echoes the requested headers).
    pub allow_headers: String,
    /// `Access-Control-Expose-Headers` of actual responses; empty: not sent.
    pub expose_headers: String,
    /// `Access-Control-Max-Age` in seconds; `None`: not sent.
    pub max_age: Option<u64>,
    pub allow_credentials: bool,
    /// `unmatchedPreflights`: a preflight from an origin not allowed goes on to the service
    /// (`FORWARD`, Envoy's default) or is answered by the proxy without CORS grants (`IGNORE`).
    pub forward_unmatched_preflights: bool,
}
