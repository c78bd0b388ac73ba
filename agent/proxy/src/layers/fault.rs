//! Fault injection (Istio `fault`, Envoy's fault filter, which runs after route selection and
//! before the router): a delay at its percentage, then an abort at its own. An aborted request
//! never reaches an upstream; a status that is not one (Istio validates it) becomes 503.
//! A gRPC abort answers a gRPC request (`content-type: application/grpc...`) with a
//! trailers-only response carrying the status, any other request with 503, as Envoy's
//! `sendLocalReply` does.

use http::StatusCode;

use super::{roll, Reply};
use meshpath_model::l7::{Abort, Fault};

/// `grpc`: whether the request is a gRPC one (see [`is_grpc`]).
pub(crate) async fn inject(fault: Option<&Fault>, grpc: bool) -> Result<(), Reply> {
    let Some(fault) = fault else {
        return Ok(());
    };
    if let Some((delay, pct)) = fault.delay {
        if roll(pct) {
            tokio::time::sleep(delay).await;
        }
    }
    if let Some((abort, pct)) = fault.abort {
        if roll(pct) {
            return Err(match abort {
                Abort::Http(status) => Reply::FaultAbort(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                ),
                Abort::Grpc(code) if grpc => Reply::GrpcAbort(code),
                Abort::Grpc(_) => Reply::FaultAbort(StatusCode::SERVICE_UNAVAILABLE),
            });
        }
    }
    Ok(())
}

/// Envoy's test for a gRPC request: its content type is `application/grpc` or a subtype.
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .map(http::HeaderValue::as_bytes)
        .is_some_and(|ct| {
            ct.strip_prefix(b"application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    fn abort(status: u16, pct: f64) -> Fault {
        Fault {
            delay: None,
            abort: Some((Abort::Http(status), pct)),
        }
    }

    #[tokio::test]
    async fn grpc_aborts_answer_grpc_requests_in_trailers_and_others_with_503() {
        let grpc = Fault {
            delay: None,
            abort: Some((Abort::Grpc(14), 100.0)),
        };
        assert_eq!(inject(Some(&grpc), true).await, Err(Reply::GrpcAbort(14)));
        assert_eq!(
            inject(Some(&grpc), false).await,
            Err(Reply::FaultAbort(StatusCode::SERVICE_UNAVAILABLE))
        );
        let mut h = http::HeaderMap::new();
        assert!(!is_grpc(&h));
        for (ct, want) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            h.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(is_grpc(&h), want, "{ct}");
        }
    }

    #[tokio::test]
    async fn abort_at_its_percentage() {
        assert_eq!(inject(None, false).await, Ok(()));
        let all = abort(429, 100.0);
        for _ in 0..100 {
            let got = inject(Some(&all), false).await;
            assert_eq!(got, Err(Reply::FaultAbort(StatusCode::TOO_MANY_REQUESTS)));
        }
        let never = abort(429, 0.0);
        assert!(
            futures::future::join_all((0..100).map(|_| inject(Some(&never), false)))
                .await
                .iter()
                .all(Result::is_ok)
        );
        let half = abort(500, 50.0);
        let mut aborted = 0;
        for _ in 0..4000 {
            if inject(Some(&half), false).await.is_err() {
                aborted += 1;
            }
        }
        // Binomial(4000, 0.5): sd ≈ 32; ±5 sd.
        assert!(
            (1840..=2160).contains(&aborted),
            "aborted {aborted} of 4000"
        );
    }

    #[tokio::test]
    async fn an_invalid_status_aborts_with_503() {
        let got = inject(Some(&abort(1000, 100.0)), false).await;
        assert_eq!(got, Err(Reply::FaultAbort(StatusCode::SERVICE_UNAVAILABLE)));
        let resp = got.unwrap_err().response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["content-type"], "text/plain");
    }

    #[tokio::test]
    async fn delay_at_its_percentage_then_abort() {
        let delay = Duration::from_millis(60);
        let both = Fault {
            delay: Some((delay, 100.0)),
            abort: Some((Abort::Http(503), 100.0)),
        };
        let t = Instant::now();
        assert!(inject(Some(&both), false).await.is_err());
        assert!(t.elapsed() >= delay, "aborted after the delay");

        // A delay never rolled is never waited for: a long one must not hold the request.
        let never = Fault {
            delay: Some((Duration::from_secs(30), 0.0)),
            abort: None,
        };
        let quick = tokio::time::timeout(Duration::from_secs(5), inject(Some(&never), false)).await;
        assert_eq!(quick, Ok(Ok(())));

        let half = Fault {
            delay: Some((Duration::from_millis(20), 50.0)),
            abort: None,
        };
        let mut delayed = 0;
        for _ in 0..60 {
            let t = Instant::now();
            inject(Some(&half), false).await.unwrap();
            if t.elapsed() >= Duration::from_millis(20) {
                delayed += 1;
            }
        }
        // Binomial(60, 0.5): sd ≈ 3.9; ±4 sd, and never all or none.
        assert!((14..=46).contains(&delayed), "delayed {delayed} of 60");
    }
}
