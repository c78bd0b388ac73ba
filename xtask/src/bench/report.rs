//! The results folder: results.md (stamped table, targets, spread, evidence, method),
//! results.json (everything, including every raw run) and latency.svg; latest.md beside it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::fortio::{self, PAYLOAD_BYTES};
use super::l7report::L7Section;
use super::model::{RunRecord, Scenario};
use super::stats::{self, Better, Check, Row, Table};
use super::svg;
use super::sysinfo::Meta;

pub struct Report<'a> {
    pub meta: &'a Meta,
    /// The kernel-path scenarios (a)–(d) that were selected; may be empty (L7 only).
    pub scenarios: &'a [Scenario],
    /// The "L7 hop" section, when any L7 scenario was selected.
    pub l7: Option<&'a L7Section>,
    /// Scenarios without results and why ("not available: ...", "failed: ...").
    pub missing: &'a BTreeMap<Scenario, String>,
    pub rows: &'a [Row],
    pub table: &'a Table,
    pub checks: &'a [Check],
    pub records: &'a [RunRecord],
    pub evidence: &'a [(u32, Value)],
    pub problems: &'a [String],
    /// Observations worth reading next to the numbers (e.g. how much (d) really redirected).
    pub notes: &'a [String],
}

/// Evidence entries for results.json, each with its repeat number inside.
pub fn with_repeats(evidence: &[(u32, Value)]) -> Vec<Value> {
    evidence
        .iter()
        .map(|(repeat, ev)| {
            let mut ev = ev.clone();
            ev["repeat"] = json!(repeat);
            ev
        })
        .collect()
}

impl Report<'_> {
    fn cell(&self, i: usize, sc: Scenario) -> String {
        let Some(c) = self.table.get(&(i, sc)) else {
            return "n/a".into();
        };
        let Some(m) = c.median else {
            return "failed".into();
        };
        let mut s = self.rows[i].format(m);
        if sc != Scenario::A {
            if let Some(r) = c.ratio_vs_a {
                let _ = write!(s, " ({r:.2}×)");
            }
        }
        if c.rate_not_held {
            s.push_str(" †");
        }
        if c.failed_runs > 0 || c.failed_requests > 0 {
            s.push_str(" !");
        }
        s
    }

    /// The main table: metric × scenario, median and ratio against (a).
    pub fn table_md(&self) -> String {
        let mut s = String::from("| metric | better |");
        for sc in self.scenarios {
            let _ = write!(s, " {} |", sc.short());
        }
        s.push_str("\n|---|---|");
        s.push_str(&"---:|".repeat(self.scenarios.len()));
        s.push('\n');
        for (i, row) in self.rows.iter().enumerate() {
            let better = if row.better == Better::Lower {
                "lower"
            } else {
                "higher"
            };
            let _ = write!(s, "| {} | {better} |", row.label);
            for &sc in self.scenarios {
                let _ = write!(s, " {} |", self.cell(i, sc));
            }
            s.push('\n');
        }
        s
    }

    fn spread_md(&self) -> String {
        let mut s = String::from("| metric |");
        for sc in self.scenarios {
            let _ = write!(s, " {} |", sc.short());
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|".repeat(self.scenarios.len()));
        s.push('\n');
        for (i, row) in self.rows.iter().enumerate() {
            let _ = write!(s, "| {} |", row.label);
            for &sc in self.scenarios {
                let cell = self.table.get(&(i, sc));
                let txt = match cell
                    .and_then(|c| Some((c.min?, c.max?, c.values.len(), c.failed_runs)))
                {
                    Some((lo, hi, n, f)) => {
                        let failed = if f > 0 {
                            format!(", {f} failed")
                        } else {
                            String::new()
                        };
                        format!("{} – {} (n={n}{failed})", row.format(lo), row.format(hi))
                    }
                    None => "n/a".into(),
                };
                let _ = write!(s, " {txt} |");
            }
            s.push('\n');
        }
        s
    }

    pub fn markdown(&self) -> String {
        let m = self.meta;
        let mut s = String::from("# meshpath benchmark\n\n");
        let _ = writeln!(s, "- started: {} (UTC)", m.started_utc);
        let _ = writeln!(s, "- kernel: `{}`", m.kernel);
        let _ = writeln!(s, "- CPU: {} × {} cores", m.cpu_model, m.cores);
        let _ = writeln!(
            s,
            "- fortio: {}, echo server listening on {}",
            m.fortio_version, m.fortio_server_listen
        );
        let _ = writeln!(
            s,
            "- meshpath commit: `{}` ({})",
            m.meshpath_commit, m.build_profile
        );
        let _ = writeln!(s, "- iptables: {}", m.iptables_version);
        let _ = writeln!(
            s,
            "- repeats: {}, duration per run: {} s, payload: {}\n",
            m.repeats, m.duration_s, m.payload
        );
        if !self.scenarios.is_empty() {
            self.core_markdown(&mut s);
        }
        if let Some(l7) = self.l7 {
            s.push_str(&l7.markdown());
        }
        if !self.problems.is_empty() {
            s.push_str("\n## Problems\n\n");
            for p in self.problems {
                let _ = writeln!(s, "- {p}");
            }
        }
        if !self.scenarios.is_empty() {
            s.push_str(METHOD);
        }
        s
    }

    /// Scenarios (a)–(d): table, targets, notes, spread, evidence.
    fn core_markdown(&self, s: &mut String) {
        s.push_str("## Scenarios\n\n");
        for sc in self.scenarios {
            let status = match self.missing.get(sc) {
                Some(why) => format!(" — **{why}**"),
                None => String::new(),
            };
            let _ = writeln!(s, "- **{}**: {}{status}", sc.short(), sc.describe());
        }
        s.push_str("\n## Results (median over repeats; ratio = median ÷ median of (a))\n\n");
        s.push_str(&self.table_md());
        s.push_str(
            "\nRatios are plain quotients for every metric: for latency below 1.00× is better, \
             for qps and throughput above 1.00× is better. `†`: the latency run did not hold the \
             requested 1000 qps (median achieved < 950), so its percentiles are from an overloaded \
             path. `!`: some runs or requests failed (see the spread table and results.json).\n",
        );
        s.push_str("\n## Targets (from the issue)\n\n```\n");
        for c in self.checks {
            s.push_str(&c.line());
            s.push('\n');
        }
        s.push_str("```\n");
        for n in self.notes {
            let _ = writeln!(s, "\n**Note:** {n}.");
        }
        s.push_str(&super::kcost::markdown(self.evidence));
        s.push_str("\n## Spread (min – max over repeats)\n\n");
        s.push_str(&self.spread_md());
        s.push_str("\n## Evidence of the path taken (counter deltas over each scenario's measurements)\n\n");
        for (repeat, ev) in self.evidence {
            let sc = ev["scenario"].as_str().unwrap_or("?");
            let phases: Vec<String> = ["fortio", "stream"]
                .iter()
                .map(|ph| {
                    format!(
                        "{ph} runs: {}{}",
                        fmt_deltas(&ev[ph]),
                        redirect_share(&ev[ph])
                    )
                })
                .collect();
            let load = &ev["loadavg_1m"];
            let _ = writeln!(
                s,
                "- ({sc}) repeat {repeat}: {}; 1-min load average {} → {}",
                phases.join("; "),
                load[0],
                load[1]
            );
        }
    }

    pub fn json(&self) -> Value {
        let rows = stats::table_json(self.rows, self.scenarios, self.table);
        let scenarios: Vec<Value> = self
            .scenarios
            .iter()
            .map(|sc| json!({ "key": sc.key(), "name": sc.short(), "description": sc.describe(), "missing": self.missing.get(sc) }))
            .collect();
        let evidence = with_repeats(self.evidence);
        json!({
            "meta": self.meta,
            "scenarios": scenarios,
            "summary": rows,
            "targets": self.checks,
            "evidence": evidence,
            "problems": self.problems,
            "notes": self.notes,
            "l7": self.l7.map(L7Section::json),
            "runs": self.records,
        })
    }

    /// Write the folder and (if `latest` names one, e.g. `latest.md`) that copy next to it.
    pub fn write(&self, dir: &Path, latest: Option<&str>) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let md = self.markdown();
        let put = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
        };
        put("results.md", &md)?;
        put(
            "results.json",
            &(serde_json::to_string_pretty(&self.json())? + "\n"),
        )?;
        let subtitle = format!(
            "kernel {}, {} × {}, fortio {}, meshpath {}, {} repeats × {} s",
            self.meta.kernel,
            self.meta.cpu_model,
            self.meta.cores,
            self.meta.fortio_version,
            self.meta.meshpath_commit,
            self.meta.repeats,
            self.meta.duration_s
        );
        if !self.scenarios.is_empty() {
            put(
                "latency.svg",
                &svg::render(self.rows, self.table, self.scenarios, &subtitle),
            )?;
        }
        if let Some(l7) = self.l7 {
            put(
                "latency-l7.svg",
                &svg::render(
                    &l7.rows,
                    &l7.table,
                    &l7.scenarios,
                    &format!("L7 hop; {subtitle}"),
                ),
            )?;
        }
        if let (Some(parent), Some(name)) = (dir.parent(), latest) {
            let latest = parent.join(name);
            std::fs::write(&latest, &md)
                .with_context(|| format!("writing {}", latest.display()))?;
        }
        Ok(())
    }
}

fn fmt_deltas(d: &Value) -> String {
    let txt = d
        .as_object()
        .map(|d| {
            d.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    if txt.is_empty() {
        "(no counters on this path)".into()
    } else {
        txt
    }
}

/// For runs with socket redirection: which share of the messages sk_msg actually redirected
/// (the rest took the TCP path), since a redirect-on scenario can silently measure the fallback.
pub fn redirect_share(d: &Value) -> String {
    let get = |k: &str| d[k].as_u64().unwrap_or(0);
    let redirected = get("msg_redirected");
    let fallback = get("msg_fallback_no_peer") + get("msg_fallback_sticky");
    if redirected + fallback == 0 {
        return String::new();
    }
    let pct = 100.0 * redirected as f64 / (redirected + fallback) as f64;
    format!(
        " — **{pct:.1} % of messages redirected** ({redirected} of {})",
        redirected + fallback
    )
}

pub fn payload_description() -> String {
    format!(
        "HTTP/1.1 POST of {PAYLOAD_BYTES} random bytes to fortio's echo handler, echoed back \
         ({PAYLOAD_BYTES} B each way plus headers), keep-alive"
    )
}

const METHOD: &str = "
## Method

- One fresh harness node per scenario and repeat: node netns with bridge `br0`, backend pod
  (10.244.0.10: fortio echo server :8080, `mp-testpod stream` server :9000) and client pod
  (10.244.0.11). One backend, so (a) dials the very server the ClusterIP services of (b)–(d)
  resolve to. `net.ipv4.ip_forward=1` and `bridge-nf-call-iptables=1` in the node netns in every
  scenario.
- Scenarios are interleaved per repeat (a, b, c, d, a, b, c, d, …) so drift on a shared machine
  hits all alike; each starts with an unrecorded 1 s warm-up that also proves the path works.
- Latency: `fortio load -qps 1000 -c N -uniform -payload-size 1024 -p 50,90,99 -r 0.00001`;
  percentiles from fortio's DurationHistogram. `-uniform` spreads the connections' requests over
  time (without it all N fire in lock-step and c=64 measures bursts of 64). `-r 0.00001`: 10 µs
  resolution, whose buckets are 10–20 % wide from 100 µs to 1 ms but 1 ms wide from 1 to 10 ms
  (fortio interpolates inside a bucket), so differences smaller than a bucket are not resolved.
  Max qps: the same request with `-qps 0`.
- Bulk stream: one TCP connection, 128 KiB writes for the run duration; rate = bytes the server
  counted ÷ time from the first write until the server acknowledged the count.
- Client, server, kernel and (c)/(d)'s idle agent share the machine's cores, so max qps and the
  stream rate measure per-request and per-byte CPU cost of each path as much as anything else.
- The fortio echo server listens as stamped above: by default like any Go server, one dual-stack
  `[::]` socket, so the server end of each connection is AF_INET6 (v4-mapped);
  `--fortio-listen pod-ip` binds an AF_INET socket instead. Scenarios (a)–(c) do not care.
- Kernel programs' own cost ((c), (d)): after the runs, 3000 connections of one request each
  (`fortio load -keepalive=false -c 4 -n 3000`) with the kernel's BPF run statistics on; per
  program run_cnt and run_time_ns deltas (bpf_prog_info), read only for the node's programs.
- Medians over the repeats; the spread table and results.json have every run. The machine may be
  shared: the evidence section has the 1-min load average around each scenario.
";

/// How much of (d)'s traffic sk_msg actually redirected, per phase over all repeats: a
/// redirect-on scenario whose messages mostly fell back to TCP measures the fallback, and the
/// table alone would not say so.
pub fn redirect_notes(
    evidence: &[(u32, serde_json::Value)],
    listen: fortio::Listen,
) -> Vec<String> {
    let mut notes = Vec::new();
    for phase in ["fortio", "stream"] {
        let (mut redirected, mut total) = (0u64, 0u64);
        for (_, ev) in evidence.iter().filter(|(_, ev)| ev["scenario"] == "d") {
            let get = |k: &str| ev[phase][k].as_u64().unwrap_or(0);
            redirected += get("msg_redirected");
            total +=
                get("msg_redirected") + get("msg_fallback_no_peer") + get("msg_fallback_sticky");
        }
        if total > 0 {
            let rest = if redirected < total {
                "; the others took the TCP fallback"
            } else {
                ""
            };
            // A fact about the set-up that explains a 0 % (verified on the dev VM: with an
            // AF_INET listener the same runs are redirected).
            let hint = if phase == "fortio" && redirected == 0 && listen == fortio::Listen::Wildcard
            {
                " (the echo server listens dual-stack on [::], so the server end of every \
                 connection is an AF_INET6 socket with a v4-mapped address; \
                 `--fortio-listen pod-ip` gives it an AF_INET socket)"
            } else {
                ""
            };
            notes.push(format!(
                "(d) {phase} runs: sk_msg redirected {redirected} of {total} messages ({:.1} %){rest}{hint}",
                100.0 * redirected as f64 / total as f64
            ));
        }
    }
    notes
}
