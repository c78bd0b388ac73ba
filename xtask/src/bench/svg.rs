//! latency.svg: median p50/p90/p99 at 1000 qps against the connection count, one line per
//! scenario, one panel per percentile.
//!
//! Written by hand: three panels of lines and labels are ~150 lines of string formatting, while
//! `plotters` would bring a dependency tree (and font handling for text) into xtask for one chart.
//! The output is plain SVG 1.1 that browsers and GitHub render.

use std::fmt::Write as _;

use super::model::{Scenario, Test, LATENCY_CONNS, LATENCY_QPS};
use super::stats::{Field, Row, Table};

const PANEL_W: f64 = 300.0;
const PANEL_H: f64 = 220.0;
const MARGIN_L: f64 = 60.0;
const MARGIN_T: f64 = 90.0;
const GAP: f64 = 40.0;

fn color(sc: Scenario) -> &'static str {
    match sc {
        Scenario::A => "#444444",
        Scenario::B => "#d95f02",
        Scenario::C => "#1b9e77",
        Scenario::D => "#7570b3",
        Scenario::E => "#1f78b4",
        Scenario::L7Direct => "#444444",
        Scenario::L7Meshpath => "#1b9e77",
        Scenario::L7Nginx => "#e7298a",
        Scenario::L7Haproxy => "#e6ab02",
        Scenario::CTcpMetricsOff => "#66a61e",
        Scenario::L7Trace1 => "#a6761d",
        Scenario::L7Trace100 => "#e41a1c",
        // Not drawn (xnode.md has tables only); colours as their same-node counterparts.
        Scenario::XDirect | Scenario::XPodDirect => "#444444",
        Scenario::XNodePortIptables | Scenario::XClusterIpIptables => "#d95f02",
        Scenario::XNodePortMeshpath | Scenario::XClusterIpMeshpath => "#1b9e77",
        Scenario::XClusterIpMeshpathNoTc => "#66a61e",
    }
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    mag * if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn render(rows: &[Row], t: &Table, scenarios: &[Scenario], subtitle: &str) -> String {
    let panels = [
        (Field::P50, "p50"),
        (Field::P90, "p90"),
        (Field::P99, "p99"),
    ];
    let width = MARGIN_L + 3.0 * PANEL_W + 2.0 * GAP + 20.0;
    let height = MARGIN_T + PANEL_H + 60.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{MARGIN_L}" y="20" font-size="15" font-weight="bold">Latency at {LATENCY_QPS} qps, 1 KiB echo (median over repeats, µs; lower is better)</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="{MARGIN_L}" y="38" fill="#555">{}</text>"##,
        esc(subtitle)
    );
    // Legend.
    for (k, &sc) in scenarios.iter().enumerate() {
        let x = MARGIN_L + k as f64 * 230.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="52" x2="{}" y2="52" stroke="{}" stroke-width="3"/><text x="{}" y="56">{}</text>"#,
            x + 20.0,
            color(sc),
            x + 26.0,
            esc(sc.short())
        );
    }
    for (p, (field, name)) in panels.iter().enumerate() {
        let x0 = MARGIN_L + p as f64 * (PANEL_W + GAP);
        let y0 = MARGIN_T;
        // Series: per scenario, (connections index, median).
        let series: Vec<(Scenario, Vec<(usize, f64)>)> = scenarios
            .iter()
            .map(|&sc| {
                let pts = LATENCY_CONNS
                    .iter()
                    .enumerate()
                    .filter_map(|(xi, &c)| {
                        let ri = rows.iter().position(|r| {
                            r.test == Test::Latency && r.connections == c && r.field == *field
                        })?;
                        t.get(&(ri, sc))
                            .and_then(|cell| cell.median)
                            .map(|m| (xi, m))
                    })
                    .collect();
                (sc, pts)
            })
            .collect();
        let max = series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|&(_, v)| v))
            .fold(0.0, f64::max);
        let step = tick_step(if max > 0.0 { max * 1.05 } else { 1.0 });
        let top = (max * 1.05 / step).ceil().max(1.0) * step;
        let px =
            |xi: usize| x0 + 20.0 + xi as f64 * (PANEL_W - 40.0) / (LATENCY_CONNS.len() - 1) as f64;
        let py = |v: f64| y0 + PANEL_H - v / top * PANEL_H;
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#999"/><text x="{}" y="{}" font-weight="bold" text-anchor="middle">{name}</text>"##,
            x0 + PANEL_W / 2.0,
            y0 - 4.0
        );
        let mut v = 0.0;
        while v <= top + step / 2.0 {
            let y = py(v);
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{v:.0}</text>"##,
                x0 + PANEL_W,
                x0 - 4.0,
                y + 4.0
            );
            v += step;
        }
        for (xi, c) in LATENCY_CONNS.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">c={c}</text>"#,
                px(xi),
                y0 + PANEL_H + 16.0
            );
        }
        for (sc, pts) in &series {
            if pts.is_empty() {
                continue;
            }
            let path: Vec<String> = pts
                .iter()
                .map(|&(xi, v)| format!("{:.1},{:.1}", px(xi), py(v)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                path.join(" "),
                color(*sc)
            );
            for &(xi, v) in pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>({}) {name} c={}: {v:.0} µs</title></circle>"#,
                    px(xi),
                    py(v),
                    color(*sc),
                    sc.key(),
                    LATENCY_CONNS[xi]
                );
            }
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{MARGIN_L}" y="{}" fill="#555">x: fortio connections (-c); y: latency in µs</text>"##,
        MARGIN_T + PANEL_H + 40.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::tick_step;

    #[test]
    fn ticks() {
        assert_eq!(tick_step(500.0), 100.0);
        assert_eq!(tick_step(90.0), 20.0);
        assert_eq!(tick_step(2400.0), 500.0);
    }
}
