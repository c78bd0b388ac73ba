//! The L7 section's resource figures (proxy CPU per 1000 rps, RSS) and the three
//! targets as PASS/MISS checks.

use std::fmt::Write as _;

use serde_json::json;

use super::l7report::L7Section;
use super::model::{Scenario, Test, LATENCY_CONNS, LATENCY_QPS, MAXQPS_CONNS};
use super::stats::{self, Check, Field};

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
        for c in MAXQPS_CONNS {
            let what = format!("meshpath proxy max qps, c={c} ≥ the better of nginx and HAProxy");
            let i = self.row_index(Test::MaxQps, c, Field::Qps);
            let get = |sc| self.median(i?, sc);
            let better = [Scenario::L7Nginx, Scenario::L7Haproxy]
                .into_iter()
                .filter_map(|p| Some((get(p)?, p)))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            out.push(match (get(mp), better) {
                (Some(m), Some((n, peer))) => Check {
                    pass: Some(m >= n),
                    text: format!(
                        "{what}: {m:.0} qps vs {} {n:.0} qps = {:.2}×",
                        peer.short(),
                        m / n
                    ),
                },
                (None, _) => Check {
                    pass: None,
                    text: format!("{what}: not measured: {}", why(mp)),
                },
                (_, None) => Check {
                    pass: None,
                    text: format!("{what}: not measured: {}", why(Scenario::L7Nginx)),
                },
            });
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
