//! The kernel programs' own cost in the meshpath scenarios: after the fortio runs, a batch of
//! short connections (one request each) through the ClusterIP with the kernel's BPF run
//! statistics on (`meshpath_tests::bpf_stats`); per program, runs per connection and
//! run_time_ns ÷ run_cnt. Then as many requests on a few kept-alive connections: there sk_msg
//! runs once per message on sockets in use a while, where a short connection's first message
//! finds its peer's SOCKHASH entry just written by another CPU. The tables give medians over the
//! repeats with the 1-min load average beside them (the machine may be shared; other work
//! inflates the per-run times).

use std::fmt::Write as _;

use meshpath_tests::bpf_stats;
use meshpath_tests::Node;
use serde_json::{json, Value};

use super::scenario::loadavg;

/// Short connections per measurement.
pub const CONNECTIONS: u32 = 3000;

/// Targets per program (ns per run), checked on (d)'s short connections: redirection on, so
/// every program runs.
const TARGETS: [(&str, f64, &str); 3] = [
    ("mp_connect4", 500.0, "ns per connect"),
    ("mp_sockops", 150.0, "ns per callback"),
    ("mp_skmsg", 200.0, "ns per message"),
];

/// Which of the two measurements.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    ShortConnections,
    KeptAlive,
}

impl Phase {
    fn of(self, kernel_cost: &Value) -> &Value {
        match self {
            Phase::ShortConnections => kernel_cost,
            Phase::KeptAlive => &kernel_cost["keepalive"],
        }
    }
}

/// Measures from pod `client` to `url`; the evidence entry (or the error, as text).
pub fn measure(node: &Node, client: usize, url: &str) -> Value {
    let load_before = loadavg();
    let short = bpf_stats::measure(node, client, url, CONNECTIONS);
    let load_mid = loadavg();
    let kept = bpf_stats::measure_keepalive(node, client, url, CONNECTIONS);
    let kept = match kept {
        Ok(m) => json!({
            "requests": m.connections,
            "connections": bpf_stats::CLIENT_CONNECTIONS,
            "programs": m.programs,
            "loadavg_1m": [load_mid, loadavg()],
        }),
        Err(e) => json!({ "error": format!("{e:#}") }),
    };
    match short {
        Ok(m) => json!({
            "connections": m.connections,
            "programs": m.programs,
            "loadavg_1m": [load_before, load_mid],
            "keepalive": kept,
        }),
        Err(e) => json!({ "error": format!("{e:#}"), "keepalive": kept }),
    }
}

/// The Service address of [`standalone`]'s cluster.
const STANDALONE_VIP: &str = "10.96.0.42";
/// How [`standalone`]'s measurements are labelled in the tables.
pub const STANDALONE: &str = "kernel";

/// The same measurement for a run without (d) (the L7 rows alone): the test harness's two-pod
/// cluster with redirection on for every socket (`bpf_stats::fortio_service`, the `kernel_cost`
/// test's set-up) and the agent the bench runs. An evidence entry labelled [`STANDALONE`]; a
/// set-up that fails (the harness panics) is recorded as the error.
pub fn standalone() -> Value {
    let run = std::panic::catch_unwind(|| {
        let c = bpf_stats::fortio_service(STANDALONE_VIP, &["--socket-redirect", "all"]);
        measure(&c.node, 0, &format!("http://{STANDALONE_VIP}/echo"))
    });
    let kernel_cost = run.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "the harness panicked".into());
        json!({ "error": why })
    });
    json!({ "scenario": STANDALONE, "kernel_cost": kernel_cost })
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

fn series(evidence: &[(u32, Value)], phase: Phase) -> Series {
    let mut out: Series = Vec::new();
    for (_, ev) in evidence {
        let sc = ev["scenario"].as_str().unwrap_or("?").to_owned();
        for p in phase.of(&ev["kernel_cost"])["programs"]
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
    let short = series(evidence, Phase::ShortConnections);
    if short.is_empty() && !evidence.iter().any(|(_, ev)| ev["kernel_cost"].is_object()) {
        return String::new();
    }
    let mut md = format!(
        "\n## Kernel programs' own cost ({CONNECTIONS} short connections per measurement, \
         bpf_stats; median over repeats)\n\n"
    );
    table(&mut md, &short, "connection");
    let kept = series(evidence, Phase::KeptAlive);
    if !kept.is_empty() {
        let _ = write!(
            md,
            "\nThe same number of requests on {} kept-alive connections (median over repeats):\n\n",
            bpf_stats::CLIENT_CONNECTIONS
        );
        table(&mut md, &kept, "request");
    }
    md.push('\n');
    for (repeat, ev) in evidence {
        let kc = &ev["kernel_cost"];
        for (what, m) in [("", kc), (" (kept alive)", &kc["keepalive"])] {
            if let Some(e) = m["error"].as_str() {
                let _ = writeln!(
                    md,
                    "- ({}) repeat {repeat}{what}: not measured: {e}",
                    ev["scenario"].as_str().unwrap_or("?")
                );
            } else if m.is_object() {
                let l = &m["loadavg_1m"];
                let _ = writeln!(
                    md,
                    "- ({}) repeat {repeat}{what}: 1-min load average {} → {}",
                    ev["scenario"].as_str().unwrap_or("?"),
                    l[0],
                    l[1]
                );
            }
        }
    }
    md.push_str("\n```\n");
    md.push_str(&checks(evidence).join("\n"));
    md.push_str("\n```\n");
    md
}

/// One table of per-program medians; `unit` is what "runs per" counts.
fn table(md: &mut String, s: &Series, unit: &str) {
    let _ = write!(
        md,
        "| scenario | program | runs per {unit} | ns per run | min – max | ns per {unit} |\n\
         |---|---|---:|---:|---:|---:|\n"
    );
    for ((sc, prog), v) in s {
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
}

/// PASS/MISS lines for the per-program targets, on (d)'s medians (or [`standalone`]'s when (d)
/// did not run): each on the short connections, and sk_msg's also on the kept-alive ones.
pub fn checks(evidence: &[(u32, Value)]) -> Vec<String> {
    let short = series(evidence, Phase::ShortConnections);
    let kept = series(evidence, Phase::KeptAlive);
    let mut lines: Vec<String> = TARGETS
        .iter()
        .map(|&(prog, target, unit)| check(&short, prog, target, unit, ""))
        .collect();
    let (prog, target, unit) = TARGETS[2];
    lines.push(check(&kept, prog, target, unit, ", kept-alive connections"));
    lines
}

fn check(s: &Series, prog: &str, target: f64, unit: &str, what: &str) -> String {
    let got = ["d", STANDALONE].iter().find_map(|label| {
        let (_, v) = s.iter().find(|((sc, p), _)| sc == label && p == prog)?;
        let ns = median(v.iter().map(|x| x.0).collect())?;
        // A connection makes one connect, but its client may run connect4 more often (fortio's
        // UDP probe of the address, which is not translated): the whole connect4 time per
        // connection is then charged to that one connect, an upper bound rather than an average
        // that the cheap untranslated runs would flatter.
        let per = median(v.iter().map(|x| x.1).collect()).unwrap_or(1.0);
        Some(if prog == "mp_connect4" && per > 1.0 {
            let how = format!("{label}; {per:.2} runs per connection, all charged to its connect");
            (how, ns * per)
        } else {
            ((*label).to_owned(), ns)
        })
    });
    match got {
        Some((label, ns)) if ns <= target => {
            format!("PASS  {prog} ≤ {target:.0} {unit}{what}: {ns:.0} ns ({label})")
        }
        Some((label, ns)) => format!(
            "MISS  {prog} ≤ {target:.0} {unit}{what}: {ns:.0} ns ({label}), {:.0} ns over",
            ns - target
        ),
        None => format!("n/a   {prog} ≤ {target:.0} {unit}{what}: (d) not measured"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_checks_from_evidence() {
        let ev = |ns: f64, msg_ns: f64| {
            json!({"scenario": "d", "kernel_cost": {"connections": 3000, "loadavg_1m": [1.0, 1.2],
                "programs": [{"name": "mp_connect4", "ns_per_run": ns, "runs_per_connection": 1.0}],
                "keepalive": {"requests": 3000, "loadavg_1m": [1.2, 1.3], "programs": [
                    {"name": "mp_skmsg", "ns_per_run": msg_ns, "runs_per_connection": 2.0}]}}})
        };
        let evidence = vec![
            (1, ev(400.0, 150.0)),
            (2, ev(900.0, 260.0)),
            (3, ev(450.0, 170.0)),
        ];
        let md = markdown(&evidence);
        assert!(
            md.contains("| (d) | mp_connect4 | 1.00 | 450 | 400 – 900 (n=3) | 450 |"),
            "{md}"
        );
        assert!(
            md.contains("| (d) | mp_skmsg | 2.00 | 170 | 150 – 260 (n=3) | 340 |"),
            "{md}"
        );
        assert!(
            md.contains("repeat 2 (kept alive): 1-min load average 1.2 → 1.3"),
            "{md}"
        );
        let c = checks(&evidence);
        assert!(c[0].starts_with("PASS  mp_connect4"), "{c:?}");
        assert!(c[1].starts_with("n/a"), "{c:?}");
        assert!(
            c[2].starts_with("n/a   mp_skmsg ≤ 200 ns per message: "),
            "{c:?}"
        );
        assert_eq!(
            c[3],
            "PASS  mp_skmsg ≤ 200 ns per message, kept-alive connections: 170 ns (d)"
        );
        assert!(markdown(&[(1, json!({"scenario": "a"}))]).is_empty());
        // Without (d), the standalone measurement's figures are checked, and say so.
        let mut alone = ev(600.0, 150.0);
        alone["scenario"] = json!(STANDALONE);
        let c = checks(&[(1, alone.clone())]);
        assert_eq!(
            c[0],
            "MISS  mp_connect4 ≤ 500 ns per connect: 600 ns (kernel), 100 ns over"
        );
        // Two connect4 runs per connection: both charged to its one connect.
        alone["kernel_cost"]["programs"][0]["runs_per_connection"] = json!(2.0);
        alone["kernel_cost"]["programs"][0]["ns_per_run"] = json!(240.0);
        let c = checks(&[(1, alone)]);
        assert_eq!(
            c[0],
            "PASS  mp_connect4 ≤ 500 ns per connect: 480 ns (kernel; 2.00 runs per connection, \
             all charged to its connect)"
        );
    }
}
