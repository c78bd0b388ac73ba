//! The "Observability cost" section (`obs.md` in the run folder, copied to
//! `observability-latest.md`): Istio's TCP metrics in the kernel on ((c)) against off
//! (c-tcpm-off), and the node proxy exporting spans to a real Jaeger at 1 % and 100 % sampling
//! against no tracing (l7-meshpath). Medians over the repeats and ratios against the variant
//! without the feature, as in the other tables; one target: TCP metrics cost at most 2 % of max
//! qps.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use serde_json::Value;

use super::model::{RunRecord, Scenario, Test, OBS};
use super::stats::{self, median, Check, Field, Row, Table};
use super::sysinfo::Meta;

/// Largest share of max qps the kernel's TCP metrics may cost.
const TCP_METRICS_BUDGET: f64 = 0.02;

struct Part {
    title: &'static str,
    base: Scenario,
    scenarios: Vec<Scenario>,
    rows: Vec<Row>,
    table: Table,
}

pub struct ObsSection {
    parts: Vec<Part>,
    pub checks: Vec<Check>,
    /// Proxy CPU per 1000 rps (median of the max-qps runs) by scenario.
    cpu: Vec<(Scenario, Option<f64>)>,
    /// 1-minute load averages seen before and after each scenario run.
    load: Vec<(Scenario, u32, Value)>,
}

impl ObsSection {
    /// `None` when no observability variant ran.
    pub fn build(
        records: &[RunRecord],
        ran: &[Scenario],
        evidence: &[(u32, Value)],
    ) -> Option<ObsSection> {
        if !ran.iter().any(|s| s.is_obs_only()) {
            return None;
        }
        let mut parts = Vec::new();
        let all_rows = stats::rows();
        let kernel = [Scenario::CTcpMetricsOff, Scenario::C];
        if kernel.iter().all(|s| ran.contains(s)) {
            parts.push(Part {
                title: "Kernel path: Istio TCP metrics (sock_ops) on vs off",
                base: Scenario::CTcpMetricsOff,
                scenarios: kernel.to_vec(),
                table: stats::summarize_vs(&all_rows, records, &kernel, Scenario::CTcpMetricsOff),
                rows: all_rows.clone(),
            });
        }
        let l7: Vec<Scenario> = [
            Scenario::L7Meshpath,
            Scenario::L7Trace1,
            Scenario::L7Trace100,
        ]
        .into_iter()
        .filter(|s| ran.contains(s))
        .collect();
        if l7.len() > 1 && l7[0] == Scenario::L7Meshpath {
            let rows: Vec<Row> = all_rows
                .iter()
                .filter(|r| r.test != Test::Stream)
                .cloned()
                .collect();
            parts.push(Part {
                title: "L7 hop: tracing to Jaeger at 1 % and 100 % sampling vs no tracing",
                base: Scenario::L7Meshpath,
                table: stats::summarize_vs(&rows, records, &l7, Scenario::L7Meshpath),
                scenarios: l7.clone(),
                rows,
            });
        }
        let cpu = l7
            .iter()
            .map(|&sc| {
                let v: Vec<f64> = records
                    .iter()
                    .filter(|r| r.scenario == sc && r.test == Test::MaxQps)
                    .filter_map(|r| r.proxy.as_ref()?.cpu_pct_per_1000_rps)
                    .collect();
                (sc, median(&v))
            })
            .collect();
        let load = evidence
            .iter()
            .filter_map(|(rep, ev)| {
                let key = ev["scenario"].as_str()?;
                let sc = OBS.into_iter().find(|s| s.key() == key)?;
                Some((sc, *rep, ev["loadavg_1m"].clone()))
            })
            .collect();
        let mut s = ObsSection {
            checks: Vec::new(),
            parts,
            cpu,
            load,
        };
        s.checks = s.targets();
        Some(s)
    }

    fn targets(&self) -> Vec<Check> {
        let Some(k) = self
            .parts
            .iter()
            .find(|p| p.base == Scenario::CTcpMetricsOff)
        else {
            return vec![Check {
                pass: None,
                text: "TCP metrics cost ≤ 2 % of max qps: not measured (needs c and c-tcpm-off)"
                    .into(),
            }];
        };
        k.rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.test == Test::MaxQps && r.field == Field::Qps)
            .map(|(i, r)| {
                let ratio = k.table.get(&(i, Scenario::C)).and_then(|c| c.ratio_vs_a);
                Check {
                    pass: ratio.map(|x| x >= 1.0 - TCP_METRICS_BUDGET),
                    text: format!(
                        "TCP metrics on costs ≤ {:.0} % of {}: on/off = {}",
                        TCP_METRICS_BUDGET * 100.0,
                        r.label,
                        ratio.map_or("n/a".into(), |x| format!("{x:.3}"))
                    ),
                }
            })
            .collect()
    }

    pub fn markdown(&self, header: &str, note: Option<&str>) -> String {
        let mut md = String::from("# Observability cost\n\n");
        let _ = writeln!(md, "{header}\n");
        if let Some(n) = note {
            let _ = writeln!(md, "**Conditions:** {n}\n");
        }
        md.push_str(
            "Each cell: median over the repeats [min–max], and in parentheses the ratio of \
             medians against the first column (the same path without the feature). Max qps: \
             higher is better; latency: lower is better.\n\n",
        );
        for p in &self.parts {
            let _ = writeln!(md, "## {}\n", p.title);
            for sc in &p.scenarios {
                let _ = writeln!(md, "- **{}** ({}): {}", sc.short(), sc.key(), sc.describe());
            }
            md.push('\n');
            let mut head = String::from("| metric |");
            let mut rule = String::from("|---|");
            for sc in &p.scenarios {
                let _ = write!(head, " {} |", sc.short());
                rule.push_str("---|");
            }
            let _ = writeln!(md, "{head}\n{rule}");
            for (i, row) in p.rows.iter().enumerate() {
                let _ = write!(md, "| {} |", row.label);
                for &sc in &p.scenarios {
                    let cell = match p.table.get(&(i, sc)) {
                        Some(c) => match (c.median, c.min, c.max) {
                            (Some(m), Some(lo), Some(hi)) => {
                                let ratio = match c.ratio_vs_a {
                                    Some(r) if sc != p.base => format!(" ({r:.3})"),
                                    _ => String::new(),
                                };
                                format!(
                                    "{} [{}–{}]{ratio}",
                                    row.format(m),
                                    row.format(lo),
                                    row.format(hi)
                                )
                            }
                            _ => format!("failed ({} runs)", c.failed_runs),
                        },
                        None => "—".into(),
                    };
                    let _ = write!(md, " {cell} |");
                }
                md.push('\n');
            }
            md.push('\n');
        }
        if !self.cpu.is_empty() {
            md.push_str("Proxy (agent process) CPU, % of one core per 1000 requests/s, median of the max-qps runs:\n\n");
            for (sc, v) in &self.cpu {
                let v = v.map_or("n/a".into(), |v| format!("{v:.1} %"));
                let _ = writeln!(md, "- {}: {v}", sc.short());
            }
            md.push('\n');
        }
        md.push_str("## Target\n\n```\n");
        md.push_str(&self.checks_text());
        md.push_str("```\n\n## Load average (1 min) before and after each scenario run\n\n");
        for (sc, rep, l) in &self.load {
            let _ = writeln!(md, "- repeat {rep}, {}: {l}", sc.key());
        }
        md
    }

    /// `obs.md` in the run folder, and `observability-latest.md` beside the folders.
    pub fn write(
        &self,
        dir: &Path,
        out_root: &Path,
        meta: &Meta,
        note: Option<&str>,
        update_latest: bool,
    ) -> Result<()> {
        let header = format!(
            "Run of {} (kernel {}, {} × {} cores, fortio {}, meshpath {} release, {} repeats × {} s per run).",
            meta.started_utc, meta.kernel, meta.cpu_model, meta.cores, meta.fortio_version,
            meta.meshpath_commit, meta.repeats, meta.duration_s
        );
        let md = self.markdown(&header, note);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("obs.md"), &md).context("writing obs.md")?;
        if update_latest {
            std::fs::write(out_root.join("observability-latest.md"), &md)
                .context("writing observability-latest.md")?;
        }
        Ok(())
    }

    pub fn checks_text(&self) -> String {
        self.checks.iter().fold(String::new(), |mut s, c| {
            s.push_str(&c.line());
            s.push('\n');
            s
        })
    }
}
