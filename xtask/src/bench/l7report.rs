//! The "L7 hop" section of results.md (and `l7` in results.json): meshpath's node proxy, nginx and
//! HAProxy as one L7 hop against the direct path, with added latency, max qps, the proxies' CPU
//! per 1000 rps and RSS, and the issue's three targets as PASS/MISS lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::model::{RunRecord, Scenario, Test, LATENCY_QPS};
use super::report::with_repeats;
use super::stats::{self, Check, Field, Row, Table};
use super::usage::SAMPLE_EVERY;

pub struct L7Section {
    pub scenarios: Vec<Scenario>,
    pub missing: BTreeMap<Scenario, String>,
    pub rows: Vec<Row>,
    pub table: Table,
    pub checks: Vec<Check>,
    pub records: Vec<RunRecord>,
    pub evidence: Vec<(u32, Value)>,
    /// `nginx -v`, `haproxy -v`.
    pub versions: Vec<String>,
    /// The proxy's instructions per request (`callgrind::measure`), when measured.
    pub callgrind: Option<Value>,
    /// The kernel programs' cost per repeat (`kcost::standalone`), when (d) did not run.
    pub kernel_cost: Vec<(u32, Value)>,
}

impl L7Section {
    pub fn build(
        records: &[RunRecord],
        scenarios: Vec<Scenario>,
        missing: BTreeMap<Scenario, String>,
        evidence: Vec<(u32, Value)>,
        versions: Vec<String>,
    ) -> L7Section {
        let records: Vec<RunRecord> = records
            .iter()
            .filter(|r| r.scenario.is_l7())
            .cloned()
            .collect();
        let rows: Vec<Row> = stats::rows()
            .into_iter()
            .filter(|r| r.test != Test::Stream)
            .collect();
        let table = stats::summarize_vs(&rows, &records, &scenarios, Scenario::L7Direct);
        let mut s = L7Section {
            scenarios,
            missing,
            rows,
            table,
            checks: Vec::new(),
            records,
            evidence,
            versions,
            callgrind: None,
            kernel_cost: Vec::new(),
        };
        s.checks = s.targets();
        s
    }

    pub(super) fn median(&self, row: usize, sc: Scenario) -> Option<f64> {
        self.table.get(&(row, sc)).and_then(|c| c.median)
    }

    pub(super) fn row_index(&self, test: Test, c: u32, field: Field) -> Option<usize> {
        self.rows
            .iter()
            .position(|r| r.test == test && r.connections == c && r.field == field)
    }

    fn cell(&self, i: usize, sc: Scenario) -> String {
        let Some(c) = self.table.get(&(i, sc)) else {
            return "n/a".into();
        };
        let Some(m) = c.median else {
            return "failed".into();
        };
        let row = &self.rows[i];
        let mut s = row.format(m);
        let base = self.median(i, Scenario::L7Direct);
        if sc != Scenario::L7Direct {
            match (row.test, base) {
                (Test::Latency, Some(b)) => {
                    let _ = write!(s, " ({:+.0} µs)", m - b);
                }
                (_, Some(_)) => {
                    if let Some(r) = c.ratio_vs_a {
                        let _ = write!(s, " ({r:.2}×)");
                    }
                }
                _ => {}
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

    pub fn table_md(&self) -> String {
        let mut s = String::from("| metric | better |");
        for sc in &self.scenarios {
            let _ = write!(s, " {} |", sc.short());
        }
        s.push_str("\n|---|---|");
        s.push_str(&"---:|".repeat(self.scenarios.len()));
        s.push('\n');
        for (i, row) in self.rows.iter().enumerate() {
            let better = if row.test == Test::Latency {
                "lower"
            } else {
                "higher"
            };
            let _ = write!(s, "| {} | {better} |", row.label);
            for &sc in &self.scenarios {
                let _ = write!(s, " {} |", self.cell(i, sc));
            }
            s.push('\n');
        }
        s
    }

    /// min – max over repeats, per metric and scenario.
    fn spread_md(&self) -> String {
        let mut s = String::from("| metric |");
        for sc in &self.scenarios {
            let _ = write!(s, " {} |", sc.short());
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|".repeat(self.scenarios.len()));
        s.push('\n');
        for (i, row) in self.rows.iter().enumerate() {
            let _ = write!(s, "| {} |", row.label);
            for &sc in &self.scenarios {
                let txt = match self
                    .table
                    .get(&(i, sc))
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

    /// Failed runs and non-200 answers, precisely (fortio's RetCodes; -1 = socket error).
    fn errors_md(&self) -> String {
        let mut s = String::new();
        for r in &self.records {
            let what = match r.test {
                Test::Latency => format!("{LATENCY_QPS} qps, c={}", r.connections),
                _ => format!("max qps, c={}", r.connections),
            };
            if let Some(e) = &r.error {
                let _ = writeln!(
                    s,
                    "- ({}) repeat {}, {what}: run failed: {e}",
                    r.scenario.key(),
                    r.repeat
                );
            } else if r.failed_requests > 0 {
                let _ = writeln!(
                    s,
                    "- ({}) repeat {}, {what}: {} of {} requests not 200, fortio RetCodes {}, \
                     ErrorsDurationHistogram count {}",
                    r.scenario.key(),
                    r.repeat,
                    r.failed_requests,
                    r.failed_requests + r.ok_requests,
                    r.raw["RetCodes"],
                    r.raw["ErrorsDurationHistogram"]["Count"]
                );
            }
        }
        s
    }

    fn evidence_md(&self) -> String {
        let mut s = String::new();
        for (repeat, ev) in &self.evidence {
            let sc = ev["scenario"].as_str().unwrap_or("?");
            let mut parts = vec![format!(
                "client → {}",
                ev["target_url"].as_str().unwrap_or("?")
            )];
            if let Some(b) = ev["steered_backend"].as_str() {
                parts.push(format!(
                    "`meshpath status`: backend of default/bench-http = {b} (the proxy); \
                     service connects {}; agent CPU {:.2} s, of it meshpath-proxy threads {:.2} s; \
                     agent log lines from the proxy or at WARN/ERROR during the runs: {} {}",
                    ev["service_connects"],
                    ev["proxy"]["cpu_s_measurements"].as_f64().unwrap_or(0.0),
                    ev["proxy_threads_cpu_s"].as_f64().unwrap_or(0.0),
                    ev["agent_log_lines"],
                    ev["agent_log_first"]
                ));
            } else if let Some(l) = ev["listen"].as_str() {
                parts.push(format!(
                    "listening on {l} in the node netns, pids {}, CPU {:.2} s",
                    ev["proxy"]["pids"],
                    ev["proxy"]["cpu_s_measurements"].as_f64().unwrap_or(0.0)
                ));
                let tail = ev["log_tail"].as_str().unwrap_or("").trim();
                if !tail.is_empty() {
                    parts.push(format!("log: `{}`", tail.replace('\n', " ⏎ ")));
                }
            }
            if let Some(v) = ev["upstream_opens_per_run"].as_array() {
                parts.push(format!(
                    "new upstream connections per run (c=1/4/16/64 @{LATENCY_QPS} qps, c=1/16/64 \
                     max qps): {}",
                    Value::Array(v.clone())
                ));
            }
            if let Some(d) = super::l7change::describe(&ev["config_change"]) {
                parts.push(d);
            }
            if let Some(n) = ev["upstream_conns_established"].as_u64() {
                parts.push(format!("upstream connections open after the runs: {n}"));
            }
            let load = &ev["loadavg_1m"];
            let _ = writeln!(
                s,
                "- ({sc}) repeat {repeat}: {}; 1-min load average {} → {}",
                parts.join("; "),
                load[0],
                load[1]
            );
        }
        s
    }

    pub fn checks_text(&self) -> String {
        self.checks.iter().map(|c| c.line() + "\n").collect()
    }

    /// For the command's output: table, CPU and RSS, targets.
    pub fn summary(&self) -> String {
        format!(
            "\n\nL7 hop (latency: added µs over l7-direct; qps: ratio to it):\n\n{}\n{}\nL7 \
             targets:\n{}{}{}",
            self.table_md(),
            self.resources_md(),
            self.checks_text(),
            super::l7change::section(&self.evidence).unwrap_or_default(),
            self.extras_text()
        )
    }

    /// The callgrind and kernel-cost PASS/MISS lines, for the command's output.
    fn extras_text(&self) -> String {
        let mut lines: Vec<String> = self.callgrind.iter().map(super::callgrind::check).collect();
        if !self.kernel_cost.is_empty() {
            lines.extend(super::kcost::checks(&self.kernel_cost));
        }
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from("\n## L7 hop\n\n");
        for v in &self.versions {
            let _ = writeln!(s, "- {v}");
        }
        for sc in &self.scenarios {
            let status = self
                .missing
                .get(sc)
                .map(|w| format!(" — **{w}**"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "- **{}** ({}): {}{status}",
                sc.short(),
                sc.key(),
                sc.describe()
            );
        }
        s.push_str(
            "\n### Results (median over repeats; latency: added µs over direct; qps: ratio to direct)\n\n",
        );
        s.push_str(&self.table_md());
        s.push_str(
            "\n`†`: the run did not hold 1000 qps (median < 950). `!`: some runs or requests \
             failed (listed under Errors).\n\n### Proxy CPU and memory\n\n",
        );
        s.push_str(&self.resources_md());
        let _ = writeln!(
            s,
            "\nCPU: utime + stime of the proxy's processes over each fortio run ÷ requests in \
             it, as % of one core at 1000 requests/s. RSS: VmRSS summed over the proxy's \
             processes (nginx: master + 2 workers, shared pages counted in each), sampled every \
             {} ms. meshpath's figures are the whole agent process (the proxy runs inside it).",
            SAMPLE_EVERY.as_millis()
        );
        s.push_str("\n### Targets (from the issue)\n\n```\n");
        s.push_str(&self.checks_text());
        s.push_str("```\n");
        if let Some(change) = super::l7change::section(&self.evidence) {
            s.push_str(&change);
        }
        if let Some(cg) = &self.callgrind {
            s.push_str(&super::callgrind::markdown(cg));
        }
        s.push_str(&super::kcost::markdown(&self.kernel_cost));
        let errors = self.errors_md();
        if !errors.is_empty() {
            s.push_str("\n### Errors\n\n");
            s.push_str(&errors);
        }
        s.push_str("\n### Spread (min – max over repeats)\n\n");
        s.push_str(&self.spread_md());
        s.push_str("\n### Evidence\n\n");
        s.push_str(&self.evidence_md());
        s.push_str(METHOD);
        s
    }

    pub fn json(&self) -> Value {
        let summary = stats::table_json(&self.rows, &self.scenarios, &self.table);
        json!({
            "baseline": Scenario::L7Direct.key(),
            "versions": self.versions,
            "missing": self.missing.iter().map(|(k, v)| (k.key(), v)).collect::<BTreeMap<_, _>>(),
            "summary": summary,
            "targets": self.checks,
            "callgrind": self.callgrind,
            "kernel_cost": with_repeats(&self.kernel_cost),
            "evidence": with_repeats(&self.evidence),
        })
    }
}

const METHOD: &str = "
### Method (L7 hop)

- One fresh harness node per scenario and repeat: node netns with bridge `br0` (10.244.0.1, the
  pods' gateway), backend pod 10.244.0.10 (fortio echo server :8080), client pod 10.244.0.11.
  The L7 scenarios are interleaved per repeat with each other (and follow (a)–(d) when those
  run); each starts with an unrecorded 1 s warm-up through the hop, which also proves the path
  works. No bulk stream.
- Latency: `fortio load -qps 1000 -c N -uniform -payload-size 1024 -p 50,90,99 -r 0.00001`
  (1 KiB POST echoed back, keep-alive; 10 µs histogram resolution, buckets 10–20 % wide up to
  1 ms and 1 ms wide above). Max qps: the same with `-qps 0`. Added latency = median percentile
  of the hop − median percentile of direct (a difference of percentiles, not a per-request
  difference).
- Paths: direct dials the pod IP; meshpath dials the ClusterIP of a Service with a
  VirtualService http route, which the kernel steers to the node proxy on 10.244.0.1:151xx
  (`meshpath status` shows that as the service's backend; evidence below); nginx and HAProxy
  listen on 10.244.0.1:15180/15181 in the node netns. meshpath is not loaded in the direct,
  nginx and HAProxy scenarios.
- Equal footing: meshpath's proxy runs 2 worker threads (one single-threaded tokio runtime
  each, as nginx runs one event loop per worker), so nginx gets
  `worker_processes 2` and HAProxy `nbthread 2`. All three keep client and upstream connections
  alive (nginx: `upstream { keepalive 64; }`, `proxy_http_version 1.1`, `Connection \"\"`,
  `keepalive_requests 1000000` both sides; HAProxy: `mode http`, `option http-keep-alive`,
  `http-reuse always`), no access logs. The configs are generated by
  xtask/src/bench/revproxy.rs into each run's scratch dir; the processes are started and
  stopped by pid, the system's nginx/HAProxy services are never used.
- Proxy, client, server and kernel share the machine's cores: max qps measures the hop's CPU
  cost per request as much as anything. New upstream connections per run: TCP PassiveOpens of
  the backend pod's netns over the run (keep-alive working: few).
";
