//! A route's retry policy, compiled: which outcomes are retried and how long to wait first.

use std::time::Duration;

use super::upstream::UpstreamError;
use meshpath_model::l7::{RetryOn, RetryPolicy};

const ON_5XX: u8 = 1;
const ON_GATEWAY: u8 = 2;
const ON_CONNECT: u8 = 4;
const ON_RESET: u8 = 8;
const ON_409: u8 = 16;
/// Istio's default `retriable-status-codes` (503).
const ON_503: u8 = 32;

/// A route's retry policy, compiled.
#[derive(Clone, Debug)]
pub(crate) struct RetryRt {
    /// Retries after the first attempt (Istio's `attempts`).
    pub retries: u32,
    pub per_try_timeout: Option<Duration>,
    on: u8,
}

impl RetryRt {
    /// `None` is Istio's mesh default (`attempts: 2`, `connect-failure,refused-stream,
    /// retriable-status-codes=503`); an empty `retry_on` gets Istio's default conditions.
    pub(crate) fn from_policy(p: Option<&RetryPolicy>) -> RetryRt {
        let Some(p) = p else {
            return RetryRt::istio_default();
        };
        let mut on = 0;
        for r in &p.retry_on {
            on |= match r {
                RetryOn::FiveXx => ON_5XX,
                RetryOn::GatewayError => ON_GATEWAY,
                RetryOn::ConnectFailure => ON_CONNECT,
                RetryOn::Reset => ON_RESET,
                RetryOn::RetriableStatus4xx => ON_409,
            };
        }
        if p.retry_on.is_empty() {
            on = ON_CONNECT | ON_503;
        }
        RetryRt {
            retries: p.attempts,
            per_try_timeout: p.per_try_timeout.filter(|d| !d.is_zero()),
            on,
        }
    }

    pub(crate) fn istio_default() -> RetryRt {
        RetryRt {
            retries: 2,
            per_try_timeout: None,
            on: ON_CONNECT | ON_503,
        }
    }

    pub(crate) fn none() -> RetryRt {
        RetryRt {
            retries: 0,
            per_try_timeout: None,
            on: 0,
        }
    }

    pub(crate) fn on_status(&self, s: u16) -> bool {
        (self.on & ON_5XX != 0 && s >= 500)
            || (self.on & ON_GATEWAY != 0 && matches!(s, 502..=504))
            || (self.on & ON_409 != 0 && s == 409)
            || (self.on & ON_503 != 0 && s == 503)
    }

    /// Envoy: `5xx`, `gateway-error` and `reset` retry any reset (connect failures included),
    /// `connect-failure` only those.
    pub(crate) fn on_error(&self, e: &UpstreamError) -> bool {
        self.on & (ON_5XX | ON_GATEWAY | ON_RESET) != 0
            || (self.on & ON_CONNECT != 0 && e.is_connect_failure())
    }

    /// A per-try timeout counts as a 504 / a reset.
    pub(crate) fn on_timeout(&self) -> bool {
        self.on & (ON_5XX | ON_GATEWAY | ON_RESET) != 0
    }
}

/// Envoy's fully jittered exponential back-off: base 25 ms, at most 250 ms.
pub(crate) fn backoff(retry: u32) -> Duration {
    let cap_ms = (25u64 * ((1u64 << retry.min(10)) - 1)).min(250);
    Duration::from_millis(fastrand::u64(..=cap_ms))
}
