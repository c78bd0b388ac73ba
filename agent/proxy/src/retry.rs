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

/// Envoy's default base interval between retries.
const DEFAULT_BACKOFF_MS: u64 = 25;

/// A route's retry policy, compiled.
#[derive(Clone, Debug)]
pub(crate) struct RetryRt {
    /// Retries after the first attempt (Istio's `attempts`).
    pub retries: u32,
    pub per_try_timeout: Option<Duration>,
    on: u8,
    /// The back-off's base interval in ms (`backoff`, else Envoy's 25 ms).
    backoff_base_ms: u64,
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
            backoff_base_ms: p
                .backoff
                .map_or(DEFAULT_BACKOFF_MS, |b| {
                    u64::try_from(b.as_millis()).unwrap_or(u64::MAX)
                })
                .max(1),
        }
    }

    pub(crate) fn istio_default() -> RetryRt {
        RetryRt {
            retries: 2,
            per_try_timeout: None,
            on: ON_CONNECT | ON_503,
            backoff_base_ms: DEFAULT_BACKOFF_MS,
        }
    }

    pub(crate) fn none() -> RetryRt {
        RetryRt {
            retries: 0,
            per_try_timeout: None,
            on: 0,
            backoff_base_ms: DEFAULT_BACKOFF_MS,
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

    /// The wait before retry number `retry` (from 1): Envoy's fully jittered exponential
    /// back-off, uniform over `base × (2^retry − 1)`, at most ten times the base (Envoy's
    /// default `max_interval`, which Istio leaves unset).
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let base = self.backoff_base_ms;
        let max = base.saturating_mul(10);
        let cap = base.saturating_mul((1u64 << retry.min(32)) - 1).min(max);
        Duration::from_millis(fastrand::u64(..=cap))
    }
}
