//! Fault injection (Istio `fault`, Envoy's fault filter, which runs after route selection and
//! before the router): a delay at its percentage, then an abort at its own. An aborted request
//! never reaches an upstream; a status that is not one (Istio validates it) becomes 503.

use http::StatusCode;

use super::{roll, Reply};
use meshpath_model::l7::Fault;

pub(crate) async fn inject(fault: Option<&Fault>) -> Result<(), Reply> {
    let Some(fault) = fault else {
        return Ok(());
    };
    if let Some((delay, pct)) = fault.delay {
        if roll(pct) {
            tokio::time::sleep(delay).await;
        }
    }
    if let Some((status, pct)) = fault.abort {
        if roll(pct) {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Err(Reply::FaultAbort(status));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    fn abort(status: u16, pct: f64) -> Fault {
        Fault {
            delay: None,
            abort: Some((status, pct)),
        }
    }

    #[tokio::test]
    async fn abort_at_its_percentage() {
        assert_eq!(inject(None).await, Ok(()));
        let all = abort(429, 100.0);
        for _ in 0..100 {
            let got = inject(Some(&all)).await;
            assert_eq!(got, Err(Reply::FaultAbort(StatusCode::TOO_MANY_REQUESTS)));
        }
        let never = abort(429, 0.0);
        assert!(
            futures::future::join_all((0..100).map(|_| inject(Some(&never))))
                .await
                .iter()
                .all(Result::is_ok)
        );
        let half = abort(500, 50.0);
        let mut aborted = 0;
        for _ in 0..4000 {
            if inject(Some(&half)).await.is_err() {
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
        let got = inject(Some(&abort(1000, 100.0))).await;
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
            abort: Some((503, 100.0)),
        };
        let t = Instant::now();
        assert!(inject(Some(&both)).await.is_err());
        assert!(t.elapsed() >= delay, "aborted after the delay");

        // A delay never rolled is never waited for: a long one must not hold the request.
        let never = Fault {
            delay: Some((Duration::from_secs(30), 0.0)),
            abort: None,
        };
        let quick = tokio::time::timeout(Duration::from_secs(5), inject(Some(&never))).await;
        assert_eq!(quick, Ok(Ok(())));

        let half = Fault {
            delay: Some((Duration::from_millis(20), 50.0)),
            abort: None,
        };
        let mut delayed = 0;
        for _ in 0..60 {
            let t = Instant::now();
            inject(Some(&half)).await.unwrap();
            if t.elapsed() >= Duration::from_millis(20) {
                delayed += 1;
            }
        }
        // Binomial(60, 0.5): sd ≈ 3.9; ±4 sd, and never all or none.
        assert!((14..=46).contains(&delayed), "delayed {delayed} of 60");
    }
}
