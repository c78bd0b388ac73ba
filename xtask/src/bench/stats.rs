//! From raw runs to the table: one row per metric, one cell per scenario holding the median over
//! the repeats and the ratio against (a); then the targets as PASS/MISS checks.

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::{RunRecord, Scenario, Test, LATENCY_CONNS, LATENCY_QPS, MAXQPS_CONNS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    P50,
    P90,
    P99,
    Qps,
    BytesPerSec,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
}

/// One metric: which runs it comes from and which value of theirs.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub id: String,
    pub label: String,
    pub test: Test,
    pub connections: u32,
    pub field: Field,
    pub better: Better,
}

impl Row {
    pub fn value(&self, r: &RunRecord) -> Option<f64> {
        match self.field {
            Field::P50 => r.p50_us,
            Field::P90 => r.p90_us,
            Field::P99 => r.p99_us,
            Field::Qps => r.qps,
            Field::BytesPerSec => r.bytes_per_sec,
        }
    }

    /// Human units: µs, requests/s, Gbit/s.
    pub fn format(&self, v: f64) -> String {
        match self.field {
            Field::P50 | Field::P90 | Field::P99 => format!("{v:.0} µs"),
            Field::Qps => format!("{v:.0} qps"),
            Field::BytesPerSec => format!("{:.2} Gbit/s", v * 8.0 / 1e9),
        }
    }
}

/// All rows, in table order.
pub fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for c in LATENCY_CONNS {
        for (field, p) in [(Field::P50, 50), (Field::P90, 90), (Field::P99, 99)] {
            rows.push(Row {
                id: format!("latency_c{c}_p{p}"),
                label: format!("p{p} latency @{LATENCY_QPS} qps, c={c}"),
                test: Test::Latency,
                connections: c,
                field,
                better: Better::Lower,
            });
        }
    }
    for c in MAXQPS_CONNS {
        rows.push(Row {
            id: format!("maxqps_c{c}"),
            label: format!("max qps, c={c}"),
            test: Test::MaxQps,
            connections: c,
            field: Field::Qps,
            better: Better::Higher,
        });
    }
    rows.push(Row {
        id: "stream".into(),
        label: "bulk TCP stream, 1 conn".into(),
        test: Test::Stream,
        connections: 1,
        field: Field::BytesPerSec,
        better: Better::Higher,
    });
    rows
}

/// One table cell: a scenario's runs of one metric.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cell {
    pub values: Vec<f64>,
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// median / median of the baseline ((a); l7-direct for the L7 rows), for every direction
    /// of "better".
    pub ratio_vs_a: Option<f64>,
    /// Runs of this metric that failed outright.
    pub failed_runs: usize,
    /// Requests that did not get a 200 over all runs.
    pub failed_requests: u64,
    /// Latency rows: the median achieved rate fell short of the requested one by more than 5 %,
    /// so the percentiles describe an overloaded path and are not comparable.
    pub rate_not_held: bool,
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

/// Cells by (row index, scenario).
pub type Table = BTreeMap<(usize, Scenario), Cell>;

pub fn summarize(rows: &[Row], records: &[RunRecord], scenarios: &[Scenario]) -> Table {
    summarize_vs(rows, records, scenarios, Scenario::A)
}

/// As [`summarize`], with the ratios against `base` (the L7 rows use their own direct runs).
pub fn summarize_vs(
    rows: &[Row],
    records: &[RunRecord],
    scenarios: &[Scenario],
    base: Scenario,
) -> Table {
    let mut t = Table::new();
    for (i, row) in rows.iter().enumerate() {
        for &sc in scenarios {
            let runs: Vec<&RunRecord> = records
                .iter()
                .filter(|r| {
                    r.scenario == sc && r.test == row.test && r.connections == row.connections
                })
                .collect();
            if runs.is_empty() {
                continue;
            }
            let values: Vec<f64> = runs.iter().filter_map(|r| row.value(r)).collect();
            let qps: Vec<f64> = runs.iter().filter_map(|r| r.qps).collect();
            let cell = Cell {
                median: median(&values),
                min: values.iter().copied().reduce(f64::min),
                max: values.iter().copied().reduce(f64::max),
                failed_runs: runs.iter().filter(|r| r.error.is_some()).count(),
                failed_requests: runs.iter().map(|r| r.failed_requests).sum(),
                rate_not_held: row.test == Test::Latency
                    && median(&qps).is_some_and(|q| q < 0.95 * f64::from(LATENCY_QPS)),
                values,
                ratio_vs_a: None,
            };
            t.insert((i, sc), cell);
        }
        let base_median = t.get(&(i, base)).and_then(|c| c.median);
        for &sc in scenarios {
            if let (Some(b), Some(cell)) = (base_median, t.get_mut(&(i, sc))) {
                cell.ratio_vs_a = cell.median.map(|m| m / b);
            }
        }
    }
    t
}

/// One of the targets.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// None: could not be evaluated (scenario not measured); reported as a MISS.
    pub pass: Option<bool>,
    pub text: String,
}

impl Check {
    pub fn line(&self) -> String {
        let tag = if self.pass == Some(true) {
            "PASS"
        } else {
            "MISS"
        };
        format!("{tag}  {}", self.text)
    }
}

/// `(d) vs (a)` factor targets and `(c),(d) no slower than (b)`. `missing` explains absent
/// scenarios (e.g. "(d) not available: ...").
pub fn targets(rows: &[Row], t: &Table, missing: &BTreeMap<Scenario, String>) -> Vec<Check> {
    let med = |i: usize, sc: Scenario| t.get(&(i, sc)).and_then(|c| c.median);
    let why_missing = |sc: Scenario| {
        missing
            .get(&sc)
            .cloned()
            .unwrap_or_else(|| format!("({}) has no successful runs", sc.key()))
    };
    let mut out = Vec::new();
    // (d) against (a): latency p50/p99 at 1000 qps ≤ 0.8×, max qps ≥ 1.3×, stream ≥ 2×.
    for (i, row) in rows.iter().enumerate() {
        let factor = match (row.test, row.field) {
            (Test::Latency, Field::P50 | Field::P99) => 0.8,
            (Test::MaxQps, _) => 1.3,
            (Test::Stream, _) => 2.0,
            _ => continue,
        };
        let op = if row.better == Better::Lower {
            "≤"
        } else {
            "≥"
        };
        let what = format!("(d) {} {op} {factor}× (a)", row.label);
        out.push(match (med(i, Scenario::D), med(i, Scenario::A)) {
            (Some(d), Some(a)) => {
                let r = d / a;
                let pass = if row.better == Better::Lower {
                    r <= factor
                } else {
                    r >= factor
                };
                let text = format!("{what}: {} vs {} = {r:.2}×", row.format(d), row.format(a));
                Check {
                    pass: Some(pass),
                    text,
                }
            }
            (None, _) => Check {
                pass: None,
                text: format!("{what}: not measured: {}", why_missing(Scenario::D)),
            },
            (_, None) => Check {
                pass: None,
                text: format!("{what}: not measured: {}", why_missing(Scenario::A)),
            },
        });
    }
    // (c) and (d) no slower than (b), over every metric.
    for sc in [Scenario::C, Scenario::D] {
        let what = format!(
            "({}) no slower than (b) on all {} metrics",
            sc.key(),
            rows.len()
        );
        let mut slower = Vec::new();
        let mut unmeasured = None;
        for (i, row) in rows.iter().enumerate() {
            match (med(i, sc), med(i, Scenario::B)) {
                (Some(x), Some(b)) => {
                    let worse = if row.better == Better::Lower {
                        x > b
                    } else {
                        x < b
                    };
                    if worse {
                        slower.push(format!(
                            "{} {} vs {} ({:.2}×)",
                            row.label,
                            row.format(x),
                            row.format(b),
                            x / b
                        ));
                    }
                }
                (None, _) => unmeasured = Some(why_missing(sc)),
                (_, None) => unmeasured = Some(why_missing(Scenario::B)),
            }
        }
        out.push(match unmeasured {
            Some(why) => Check {
                pass: None,
                text: format!("{what}: not measured: {why}"),
            },
            None if slower.is_empty() => Check {
                pass: Some(true),
                text: what,
            },
            None => Check {
                pass: Some(false),
                text: format!("{what}: slower on {}: {}", slower.len(), slower.join("; ")),
            },
        });
    }
    // (e) against (c): the same connect-time LB, bpf_redirect_peer instead of the bridge.
    for (i, row) in rows.iter().enumerate() {
        if row.test != Test::MaxQps {
            continue;
        }
        let what = format!("(e) {} ≥ 1.1× (c)", row.label);
        out.push(match (med(i, Scenario::E), med(i, Scenario::C)) {
            (Some(e), Some(c)) => Check {
                pass: Some(e / c >= 1.1),
                text: format!(
                    "{what}: {} vs {} = {:.2}×",
                    row.format(e),
                    row.format(c),
                    e / c
                ),
            },
            (None, _) => Check {
                pass: None,
                text: format!("{what}: not measured: {}", why_missing(Scenario::E)),
            },
            (_, None) => Check {
                pass: None,
                text: format!("{what}: not measured: {}", why_missing(Scenario::C)),
            },
        });
    }
    out
}

/// The table as JSON, one entry per row with its cells by scenario key (`results.json`).
pub fn table_json(rows: &[Row], scenarios: &[Scenario], table: &Table) -> Vec<serde_json::Value> {
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let cells: serde_json::Map<String, serde_json::Value> = scenarios
                .iter()
                .filter_map(|&sc| {
                    let c = table.get(&(i, sc))?;
                    Some((sc.key().to_owned(), serde_json::to_value(c).ok()?))
                })
                .collect();
            serde_json::json!({ "row": row, "cells": cells })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn ratios_and_checks() {
        let rows = rows();
        let mut recs = Vec::new();
        for (sc, p50, bps) in [
            (Scenario::A, 100.0, 1e9),
            (Scenario::B, 120.0, 0.9e9),
            (Scenario::D, 70.0, 2.5e9),
        ] {
            let mut r = RunRecord::new(1, sc, Test::Latency, 1);
            (r.p50_us, r.p90_us, r.p99_us, r.qps) = (Some(p50), Some(p50), Some(p50), Some(1000.0));
            recs.push(r);
            let mut s = RunRecord::new(1, sc, Test::Stream, 1);
            s.bytes_per_sec = Some(bps);
            recs.push(s);
        }
        let t = summarize(&rows, &recs, &[Scenario::A, Scenario::B, Scenario::D]);
        let p50 = rows.iter().position(|r| r.id == "latency_c1_p50").unwrap();
        assert!((t[&(p50, Scenario::D)].ratio_vs_a.unwrap() - 0.7).abs() < 1e-9);
        let checks = targets(&rows, &t, &BTreeMap::new());
        let find = |s: &str| {
            checks
                .iter()
                .find(|c| c.text.starts_with(s))
                .unwrap()
                .clone()
        };
        assert_eq!(find("(d) p50 latency @1000 qps, c=1 ").pass, Some(true));
        assert_eq!(find("(d) bulk TCP stream").pass, Some(true));
        // No max-qps runs at all: not measured, reported as a miss.
        assert_eq!(find("(d) max qps, c=1 ").pass, None);
        assert!(find("(c) no slower").line().starts_with("MISS"));
    }
}
