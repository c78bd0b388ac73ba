//! `/ui` on the admin listener: the live service graph page (hand-written HTML/JS/SVG, embedded
//! in the binary) and the graph it polls, `/ui/graph.json[?window=SECONDS]`, which
//! `meshpath top` reads too.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::admin::AdminState;
use crate::graph::{prom, History, Sample, DEFAULT_WINDOW, MAX_WINDOW};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/graph.js");

/// The graph's history of samples, shared by every viewer.
pub type SharedHistory = Arc<Mutex<History>>;

/// `(content type, body)` for a `/ui` path; `None` for a path that is not one.
pub async fn serve(
    path: &str,
    query: Option<&str>,
    state: &AdminState,
) -> Option<(&'static str, String)> {
    match path {
        "/ui" | "/ui/" => Some(("text/html; charset=utf-8", INDEX.to_owned())),
        "/ui/graph.js" => Some(("text/javascript; charset=utf-8", SCRIPT.to_owned())),
        "/ui/graph.json" => {
            let window = window(query);
            let state = state.clone();
            // The kernel's TCP pairs are map reads (syscalls): off the async workers.
            let json = tokio::task::spawn_blocking(move || graph_json(&state, window))
                .await
                .unwrap_or_else(|error| {
                    warn!(%error, "computing the service graph");
                    "{}".to_owned()
                });
            Some(("application/json", json))
        }
        _ => None,
    }
}

fn graph_json(state: &AdminState, window: Duration) -> String {
    let at = Instant::now();
    let series = match prom::parse(&istio_metrics_text(state)) {
        Ok(s) => s,
        Err(error) => {
            warn!(%error, "reading the Istio metrics for the graph");
            Vec::new()
        }
    };
    let sample = Sample::from_series(&series);
    let graph = match state.graph.lock() {
        Ok(mut h) => h.graph(at, sample, window),
        Err(poisoned) => poisoned.into_inner().graph(at, sample, window),
    };
    serde_json::to_string(&graph).unwrap_or_else(|_| "{}".to_owned())
}

/// What `/metrics` renders, from the one registry: the graph reads the same values a
/// Prometheus scrape does.
fn istio_metrics_text(state: &AdminState) -> String {
    state.encode_metrics()
}

/// `window=SECONDS` from the query (1 to MAX_WINDOW), else the default.
fn window(query: Option<&str>) -> Duration {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("window="))
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 1.0)
        .map_or(DEFAULT_WINDOW, |s| {
            Duration::from_secs_f64(s).min(MAX_WINDOW)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_comes_from_the_query_within_bounds() {
        assert_eq!(window(None), DEFAULT_WINDOW);
        assert_eq!(window(Some("window=30")), Duration::from_secs(30));
        assert_eq!(window(Some("x=1&window=2.5")), Duration::from_millis(2500));
        assert_eq!(window(Some("window=100000")), MAX_WINDOW);
        for bad in ["window=0", "window=abc", "window=-3", "window=NaN"] {
            assert_eq!(window(Some(bad)), DEFAULT_WINDOW, "{bad}");
        }
    }

    #[test]
    fn the_page_loads_its_script_and_polls_the_graph() {
        assert!(INDEX.contains(r#"<script src="/ui/graph.js">"#));
        assert!(SCRIPT.contains(r#""/ui/graph.json""#));
    }
}
