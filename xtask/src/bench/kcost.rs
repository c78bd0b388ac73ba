//! The kernel programs' own cost in the meshpath scenarios: after the fortio runs, a batch of
//! short connections (one request each) through the ClusterIP with the kernel's BPF run
//! statistics on (`meshpath_tests::bpf_stats`); per program, runs per connection and
//! run_time_ns ÷ run_cnt. The table gives medians over the repeats with the 1-min load average
//! beside them (the machine may be shared; other work inflates the per-run times).

use std::fmt::Write as _;

use meshpath_tests::bpf_stats;
use meshpath_tests::Node;
use serde_json::{json, Value};

use super::scenario::loadavg;

/// Short connections per measurement.
pub const CONNECTIONS: u32 = 3000;

/// Targets per program (ns per run), checked on (d): redirection on, so every program runs.
const TARGETS: [(&str, f64, &str); 3] = [
    ("mp_connect4", 500.0, "ns per connect"),
    ("mp_sockops", 150.0, "ns per callback"),
    ("mp_skmsg", 200.0, "ns per message"),
];

/// Measures from pod `client` to `url`; the evidence entry (or the error, as text).
pub fn measure(node: &Node, client: usize, url: &str) -> Value {
    let load_before = loadavg();
    match bpf_stats::measure(node, client, url, CONNECTIONS) {
        Ok(m) => json!({
            "connections": m.connections,
            "programs": m.programs,
            "loadavg_1m": [load_before, loadavg()],
        }),
        Err(e) => json!({ "error": format!("{e:#}") }),
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// (scenario, program) → per-repeat (ns per run, runs per connection), in first-seen order.
type Series = Vec<((String, String), Vec<(f64, f64)>)>;

fn series(evidence: &[(u32, Value)]) -> Series {
    let mut out: Series = Vec::new();
    for (_, ev) in evidence {
        let sc = ev["scenario"].as_str().unwrap_or("?").to_owned();
        for p in ev["kernel_cost"]["programs"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let (Some(name), Some(ns), Some(per)) = (
                p["name"].as_str(),
                p["ns_per_run"].as_f64(),
                p["runs_per_connection"].as_f64(),
            ) else {
                continue;
            };
            let k = (sc.clone(), name.to_owned());
            match out.iter_mut().find(|(key, _)| *key == k) {
                Some((_, v)) => v.push((ns, per)),
                None => out.push((k, vec![(ns, per)])),
            }
        }
    }
    out
}

/// The "Kernel programs' own cost" section of results.md (empty when nothing was measured).
pub fn markdown(evidence: &[(u32, Value)]) -> String {
    let s = series(evidence);
    if s.is_empty() && !evidence.iter().any(|(_, ev)| ev["kernel_cost"].is_object()) {
        return String::new();
    }
    let mut md = format!(
        "\n## Kernel programs' own cost ({CONNECTIONS} short connections per measurement, \
         bpf_stats; median over repeats)\n\n\
         | scenario | program | runs per connection | ns per run | min – max | ns per connection |\n\
         |---|---|---:|---:|---:|---:|\n"
    );
    for ((sc, prog), v) in &s {
        let ns: Vec<f64> = v.iter().map(|x| x.0).collect();
        let per = median(v.iter().map(|x| x.1).collect()).unwrap_or(0.0);
        let m = median(ns.clone()).unwrap_or(0.0);
        let lo = ns.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ns.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            md,
            "| ({sc}) | {prog} | {per:.2} | {m:.0} | {lo:.0} – {hi:.0} (n={}) | {:.0} |",
            ns.len(),
            m * per
        );
    }
    md.push('\n');
    for (repeat, ev) in evidence {
        let kc = &ev["kernel_cost"];
        if let Some(e) = kc["error"].as_str() {
            let _ = writeln!(
                md,
                "- ({}) repeat {repeat}: not measured: {e}",
                ev["scenario"]
            );
        } else if kc.is_object() {
            let l = &kc["loadavg_1m"];
            let _ = writeln!(
                md,
                "- ({}) repeat {repeat}: 1-min load average {} → {}",
                ev["scenario"].as_str().unwrap_or("?"),
                l[0],
                l[1]
            );
        }
    }
    md.push_str("\n```\n");
    md.push_str(&checks(evidence).join("\n"));
    md.push_str("\n```\n");
    md
}

/// PASS/MISS lines for the per-program targets, on (d)'s medians.
pub fn checks(evidence: &[(u32, Value)]) -> Vec<String> {
    let s = series(evidence);
    TARGETS
        .iter()
        .map(|(prog, target, unit)| {
            let got = s
                .iter()
                .find(|((sc, p), _)| sc == "d" && p == prog)
                .and_then(|(_, v)| median(v.iter().map(|x| x.0).collect()));
            match got {
                Some(ns) if ns <= *target => {
                    format!("PASS  {prog} ≤ {target:.0} {unit}: {ns:.0} ns (d)")
                }
                Some(ns) => format!(
                    "MISS  {prog} ≤ {target:.0} {unit}: {ns:.0} ns (d), {:.0} ns over",
                    ns - target
                ),
                None => format!("n/a   {prog} ≤ {target:.0} {unit}: (d) not measured"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_checks_from_evidence() {
        let ev = |ns: f64| {
            json!({"scenario": "d", "kernel_cost": {"connections": 3000, "loadavg_1m": [1.0, 1.2],
                "programs": [{"name": "mp_connect4", "ns_per_run": ns, "runs_per_connection": 1.0}]}})
        };
        let evidence = vec![(1, ev(400.0)), (2, ev(900.0)), (3, ev(450.0))];
        let md = markdown(&evidence);
        assert!(
            md.contains("| (d) | mp_connect4 | 1.00 | 450 | 400 – 900 (n=3) | 450 |"),
            "{md}"
        );
        let c = checks(&evidence);
        assert!(c[0].starts_with("PASS  mp_connect4"), "{c:?}");
        assert!(c[1].starts_with("n/a"), "{c:?}");
        assert!(markdown(&[(1, json!({"scenario": "a"}))]).is_empty());
    }
}
