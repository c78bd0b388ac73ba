//! The L7 section's resource figures (proxy CPU per 1000 rps, RSS) and the targets
//! as PASS/MISS checks: added latency (p90 ≤ 100 µs; p50, p90 and p99 at or below the better
//! of nginx and HAProxy), max qps and CPU against the better peer, RSS.

use std::fmt::Write as _;

use serde_json::json;

use super::l7report::L7Section;
use super::model::{Scenario, Test, LATENCY_CONNS, LATENCY_QPS, MAXQPS_CONNS};
use super::stats::{self, Better, Check, Field};

/// The targets from the issue.
const ADDED_P90_MAX_US: f64 = 100.0;
/// "RSS ≤ 15 MB", read as decimal megabytes (15 × 10⁶ B = 14.31 MiB), the stricter reading.
const RSS_MAX_BYTES: f64 = 15e6;

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

impl L7Section {
    fn proxies(&self) -> Vec<Scenario> {
        self.scenarios
            .iter()
            .copied()
            .filter(|&s| s != Scenario::L7Direct)
            .collect()
    }

    /// Median over repeats of the proxy's CPU (% of a core per 1000 rps) in one kind of run.
    fn cpu(&self, sc: Scenario, test: Test, c: u32) -> Option<f64> {
        let v: Vec<f64> = self
            .records
            .iter()
            .filter(|r| r.scenario == sc && r.test == test && r.connections == c)
            .filter_map(|r| r.proxy.as_ref()?.cpu_pct_per_1000_rps)
            .collect();
        stats::median(&v)
    }

    /// (median, max) over repeats of an evidence value of the proxy, KiB.
    fn rss(&self, sc: Scenario, key: &str) -> Option<(f64, f64)> {
        let v: Vec<f64> = self
            .evidence
            .iter()
            .filter(|(_, ev)| ev["scenario"] == json!(sc))
            .filter_map(|(_, ev)| ev["proxy"][key].as_f64())
            .collect();
        Some((stats::median(&v)?, v.iter().copied().reduce(f64::max)?))
    }

    pub fn resources_md(&self) -> String {
        let proxies = self.proxies();
        let mut s = String::from("| proxy process(es) |");
        for sc in &proxies {
            let _ = write!(s, " {} |", sc.short());
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|".repeat(proxies.len()));
        s.push('\n');
        let mut line = |label: String, f: &dyn Fn(Scenario) -> Option<String>| {
            let _ = write!(s, "| {label} |");
            for &sc in &proxies {
                let _ = write!(s, " {} |", f(sc).unwrap_or_else(|| "n/a".into()));
            }
            s.push('\n');
        };
        let runs = LATENCY_CONNS
            .iter()
            .map(|&c| (Test::Latency, c, format!("@{LATENCY_QPS} qps, c={c}")))
            .chain(
                MAXQPS_CONNS
                    .iter()
                    .map(|&c| (Test::MaxQps, c, format!("at max qps, c={c}"))),
            );
        for (test, c, what) in runs {
            line(format!("CPU per 1000 rps {what}"), &|sc| {
                self.cpu(sc, test, c).map(|v| format!("{v:.1} % core"))
            });
        }
        for (test, c) in [(Test::Latency, 64), (Test::MaxQps, 64)] {
            let what = if test == Test::Latency {
                "@1000 qps"
            } else {
                "at max qps"
            };
            line(
                format!("new upstream connections during the run {what}, c={c} (median)"),
                &|sc| {
                    let v: Vec<f64> = self
                        .records
                        .iter()
                        .filter(|r| r.scenario == sc && r.test == test && r.connections == c)
                        .filter_map(|r| r.proxy.as_ref()?.upstream_opens)
                        .map(|n| n as f64)
                        .collect();
                    stats::median(&v).map(|m| format!("{m:.0}"))
                },
            );
        }
        let rss_rows = [
            ("rss_idle_kib", "RSS after warm-up, before the runs"),
            ("rss_peak_kib", "RSS peak during the runs (sampled)"),
            ("rss_after_kib", "RSS after the runs"),
            ("rss_after_anon_kib", "of it anonymous (heap, stacks)"),
            (
                "rss_after_file_kib",
                "of it file-backed (code and data of the binary and libraries)",
            ),
            ("vm_hwm_kib", "VmHWM (lifetime peak, incl. start-up)"),
        ];
        for (key, label) in rss_rows {
            line(format!("{label}, median (max)"), &|sc| {
                self.rss(sc, key)
                    .map(|(m, x)| format!("{} ({})", mib(m), mib(x)))
            });
        }
        s
    }

    pub(super) fn targets(&self) -> Vec<Check> {
        let mp = Scenario::L7Meshpath;
        let why = |sc: Scenario| {
            self.missing
                .get(&sc)
                .cloned()
                .unwrap_or_else(|| format!("({}) has no successful runs", sc.key()))
        };
        let mut out = Vec::new();
        for c in LATENCY_CONNS {
            let what = format!(
                "meshpath proxy added p90 @{LATENCY_QPS} qps, c={c} ≤ {ADDED_P90_MAX_US:.0} µs"
            );
            let i = self.row_index(Test::Latency, c, Field::P90);
            let added = |sc| Some(self.median(i?, sc)? - self.median(i?, Scenario::L7Direct)?);
            out.push(match added(mp) {
                Some(a) => {
                    let held = i
                        .and_then(|i| self.table.get(&(i, mp)))
                        .is_some_and(|c| c.rate_not_held);
                    let others: Vec<String> = [Scenario::L7Nginx, Scenario::L7Haproxy]
                        .iter()
                        .filter_map(|&o| Some(format!("{} {:+.0} µs", o.short(), added(o)?)))
                        .collect();
                    let mut text = format!("{what}: {a:+.0} µs");
                    if !others.is_empty() {
                        let _ = write!(text, " ({})", others.join(", "));
                    }
                    if held {
                        text.push_str(" † rate not held");
                    }
                    Check {
                        pass: Some(a <= ADDED_P90_MAX_US && !held),
                        text,
                    }
                }
                None => Check {
                    pass: None,
                    text: format!("{what}: not measured: {}", why(mp)),
                },
            });
        }
        for (field, name) in [
            (Field::P50, "p50"),
            (Field::P90, "p90"),
            (Field::P99, "p99"),
        ] {
            for c in LATENCY_CONNS {
                let i = self.row_index(Test::Latency, c, field);
                let added = |sc| Some(self.median(i?, sc)? - self.median(i?, Scenario::L7Direct)?);
                out.push(against_peers(
                    format!(
                        "meshpath proxy added {name} @{LATENCY_QPS} qps, c={c} ≤ the better peer's"
                    ),
                    added,
                    Better::Lower,
                    |v| format!("{v:+.0} µs"),
                    &why,
                ));
            }
        }
        for c in MAXQPS_CONNS {
            let i = self.row_index(Test::MaxQps, c, Field::Qps);
            out.push(against_peers(
                format!("meshpath proxy max qps, c={c} ≥ the better peer's"),
                |sc| self.median(i?, sc),
                Better::Higher,
                |v| format!("{v:.0} qps"),
                &why,
            ));
        }
        for c in LATENCY_CONNS {
            out.push(against_peers(
                format!(
                    "meshpath proxy CPU per 1000 rps @{LATENCY_QPS} qps, c={c} ≤ the better peer's"
                ),
                |sc| self.cpu(sc, Test::Latency, c),
                Better::Lower,
                |v| format!("{v:.1} % core"),
                &why,
            ));
        }
        let what = "meshpath proxy RSS ≤ 15 MB (15 × 10⁶ B = 14.3 MiB)";
        out.push(
            match (self.rss(mp, "rss_peak_kib"), self.rss(mp, "rss_after_kib")) {
                (Some((_, peak)), Some((_, after))) => Check {
                    pass: Some(peak * 1024.0 <= RSS_MAX_BYTES),
                    text: format!(
                    "{what}: peak {} = {:.1} MB during the runs, {} after them (agent process, \
                     max over repeats)",
                    mib(peak),
                    peak * 1024.0 / 1e6,
                    mib(after)
                ),
                },
                _ => Check {
                    pass: None,
                    text: format!("{what}: not measured: {}", why(mp)),
                },
            },
        );
        out
    }
}

/// The better of nginx's and HAProxy's figure, and whose it is.
fn better_peer(get: impl Fn(Scenario) -> Option<f64>, better: Better) -> Option<(f64, Scenario)> {
    [Scenario::L7Nginx, Scenario::L7Haproxy]
        .into_iter()
        .filter_map(|p| Some((get(p)?, p)))
        .reduce(|a, b| {
            let b_wins = match better {
                Better::Lower => b.0 < a.0,
                Better::Higher => b.0 > a.0,
            };
            if b_wins {
                b
            } else {
                a
            }
        })
}

/// meshpath's figure against the better peer's: met when at least as good, and by how much.
fn against_peers(
    what: String,
    get: impl Fn(Scenario) -> Option<f64>,
    better: Better,
    show: impl Fn(f64) -> String,
    why: &dyn Fn(Scenario) -> String,
) -> Check {
    let mp = Scenario::L7Meshpath;
    match (get(mp), better_peer(&get, better)) {
        (Some(m), Some((p, peer))) => {
            let pass = match better {
                Better::Lower => m <= p,
                Better::Higher => m >= p,
            };
            // A ratio reads right only between positive figures; an added latency can be zero
            // or negative (a percentile below direct's), and then the difference says it.
            let ratio = if p > 0.0 && m >= 0.0 {
                format!(" = {:.2}×", m / p)
            } else {
                let side = if m >= p { "more" } else { "less" };
                format!(" ({} {side})", show((m - p).abs()))
            };
            Check {
                pass: Some(pass),
                text: format!("{what}: {} vs {} {}{ratio}", show(m), peer.short(), show(p)),
            }
        }
        (None, _) => Check {
            pass: None,
            text: format!("{what}: not measured: {}", why(mp)),
        },
        (_, None) => Check {
            pass: None,
            text: format!("{what}: not measured: {}", why(Scenario::L7Nginx)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(
        nginx: Option<f64>,
        haproxy: Option<f64>,
        mp: Option<f64>,
    ) -> impl Fn(Scenario) -> Option<f64> {
        move |sc| match sc {
            Scenario::L7Nginx => nginx,
            Scenario::L7Haproxy => haproxy,
            Scenario::L7Meshpath => mp,
            _ => None,
        }
    }

    #[test]
    fn the_better_peer_depends_on_the_direction() {
        let get = figures(Some(5.0), Some(7.0), None);
        assert_eq!(
            better_peer(&get, Better::Lower),
            Some((5.0, Scenario::L7Nginx))
        );
        assert_eq!(
            better_peer(&get, Better::Higher),
            Some((7.0, Scenario::L7Haproxy))
        );
        let only = figures(None, Some(7.0), None);
        assert_eq!(
            better_peer(&only, Better::Lower),
            Some((7.0, Scenario::L7Haproxy))
        );
    }

    #[test]
    fn meshpath_passes_only_when_as_good_as_the_better_peer() {
        let why = |_| "absent".to_string();
        let show = |v: f64| format!("{v:.0}");
        let lower = |mp| {
            against_peers(
                "x".into(),
                figures(Some(100.0), Some(120.0), mp),
                Better::Lower,
                show,
                &why,
            )
        };
        assert_eq!(lower(Some(100.0)).pass, Some(true));
        assert_eq!(lower(Some(110.0)).pass, Some(false));
        assert!(
            lower(Some(110.0)).text.contains("vs nginx 100 = 1.10×"),
            "{}",
            lower(Some(110.0)).text
        );
        assert_eq!(lower(None).pass, None);
        // Negative added latencies: no ratio, the difference.
        let negative = against_peers(
            "z".into(),
            figures(Some(-26.0), Some(-16.0), Some(-10.0)),
            Better::Lower,
            show,
            &why,
        );
        assert_eq!(negative.pass, Some(false));
        assert!(
            negative.text.ends_with("vs nginx -26 (16 more)"),
            "{}",
            negative.text
        );
        let higher = against_peers(
            "y".into(),
            figures(Some(100.0), Some(120.0), Some(110.0)),
            Better::Higher,
            show,
            &why,
        );
        assert_eq!(higher.pass, Some(false));
        assert!(higher.text.contains("HAProxy 120"), "{}", higher.text);
    }
}
