//! The bench-kube table, one row per cluster size.

use std::fmt::Write as _;

use super::{percentile, BenchKubeArgs, Row};

pub fn render(rows: &[Row], args: &BenchKubeArgs) -> String {
    let mut s = String::new();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ =
        writeln!(
        s,
        "meshpath bench-kube ({}; release agent, kube-apiserver and etcd on loopback, {} cores; \
         load average at the end {})\n",
        std::process::Command::new("uname")
            .arg("-r")
            .output()
            .map(|o| format!("kernel {}", String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let ms = |us: f64| format!("{:.2} ms", us / 1e3);
    let _ = writeln!(
        s,
        "| Services × 10 endpoints | agent | objects created in | start → listed | → maps programmed | RSS after sync | one change at a time ({}): p50 | p99 | max | churn {}/s × {} s: sent | p50 | p99 | max | keeps up | agent CPU | RSS peak |",
        args.changes, args.churn_rate, args.churn_seconds
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let mut l = r.latency_us.clone();
        l.sort_unstable();
        let churn = match &r.churn {
            Some(Err(why)) => format!("not measured: {why} | – | – | – | – | –"),
            Some(Ok(c)) => {
                let mut l = c.latency_us.clone();
                l.sort_unstable();
                let repeated = match c.repeated_after_stall_ms {
                    Some(gap) => format!("; repeated: the first run's watch stalled {gap:.0} ms"),
                    None => String::new(),
                };
                format!(
                    "{} in {:.1} s ({} failed; {} snapshots, longest gap {:.0} ms{}) | {} | {} | {} | {} (p99 halves {} / {}, drained in {:.0} ms) | {:.0} % of a core",
                    c.sent.patches,
                    c.sent.elapsed.as_secs_f64(),
                    c.sent.failed,
                    l.len(),
                    c.longest_gap_ms,
                    repeated,
                    ms(percentile(&l, 50.0)),
                    ms(percentile(&l, 99.0)),
                    ms(l.last().copied().unwrap_or(0) as f64),
                    if c.kept_up() { "yes" } else { "no" },
                    ms(c.halves_p99_us.0),
                    ms(c.halves_p99_us.1),
                    c.drain_ms,
                    c.cpu_share * 100.0
                )
            }
            None => "– | – | – | – | – | –".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} s | {:.0} ms | {:.0} ms | {:.1} MiB | {} | {} | {} | {} | {:.1} MiB |",
            r.services,
            r.agent.label(),
            r.create_s,
            r.listed_ms,
            r.programmed_ms,
            r.synced_rss_kib as f64 / 1024.0,
            ms(percentile(&l, 50.0)),
            ms(percentile(&l, 99.0)),
            ms(l.last().copied().unwrap_or(0) as f64),
            churn,
            r.rss_kib as f64 / 1024.0
        );
    }
    s
}
