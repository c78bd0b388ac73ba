//! `meshpath top`: the service graph's edges as a terminal table, refreshed live, from a running
//! agent's `/ui/graph.json` (the same figures the `/ui` page draws).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use crate::admin::{fetch, AdminError};
use crate::graph::{Edge, Graph, Node, NodeKind, Traffic};

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("reading the graph")]
    Fetch(#[from] AdminError),
    #[error("parsing the graph from {addr}")]
    Parse {
        addr: SocketAddr,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing the table")]
    Write(#[source] std::io::Error),
}

/// Prints the table once (`interval` `None`), or redraws it every `interval` until interrupted.
pub async fn run(
    addr: SocketAddr,
    window: Duration,
    interval: Option<Duration>,
) -> Result<(), TopError> {
    let path = format!("/ui/graph.json?window={}", window.as_secs_f64());
    let redraw = std::io::stdout().is_terminal();
    loop {
        let body = fetch(addr, &path).await?;
        let graph: Graph =
            serde_json::from_str(&body).map_err(|source| TopError::Parse { addr, source })?;
        let mut out = std::io::stdout().lock();
        let table = render(&graph);
        // A terminal gets the table redrawn in place; a pipe gets one table after another.
        let clear = if redraw && interval.is_some() {
            "\x1b[H\x1b[2J"
        } else {
            ""
        };
        write!(out, "{clear}{table}")
            .and_then(|()| out.flush())
            .map_err(TopError::Write)?;
        let Some(every) = interval else {
            return Ok(());
        };
        drop(out);
        tokio::time::sleep(every).await;
        if !redraw {
            let _ = writeln!(std::io::stdout());
        }
    }
}

/// The HTTP edges, then the TCP ones, in aligned columns; `-` where a rate is not known yet.
pub fn render(g: &Graph) -> String {
    let name = |id: &str| {
        g.nodes
            .iter()
            .find(|n| n.id == id)
            .map_or_else(|| id.to_owned(), label)
    };
    let rate =
        |x: Option<f64>, digits: usize| x.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    let mut http = vec![row(&[
        "SOURCE",
        "DESTINATION",
        "REQUESTS",
        "5XX",
        "RPS",
        "5XX%",
        "P99 MS",
    ])];
    let mut tcp = vec![row(&[
        "SOURCE",
        "DESTINATION",
        "CONNECTIONS",
        "BYTES",
        "CONN/S",
        "BYTES/S",
    ])];
    for Edge {
        source,
        target,
        traffic,
    } in &g.edges
    {
        let (src, dst) = (name(source), name(target));
        match traffic {
            Traffic::Http {
                requests,
                errors,
                rps,
                error_rate,
                p99_ms,
            } => http.push(vec![
                src,
                dst,
                requests.to_string(),
                errors.to_string(),
                rate(*rps, 2),
                error_rate.map_or("-".to_owned(), |e| format!("{:.1}%", 100.0 * e)),
                rate(*p99_ms, 1),
            ]),
            Traffic::Tcp {
                connections,
                bytes,
                cps,
                bps,
            } => tcp.push(vec![
                src,
                dst,
                connections.to_string(),
                bytes.to_string(),
                rate(*cps, 2),
                rate(*bps, 0),
            ]),
        }
    }
    let window = g
        .window_s
        .map_or("rates: no earlier sample yet".to_owned(), |w| {
            format!("rates over {w:.1} s")
        });
    let mut out = format!(
        "meshpath top · {} edges · {window}\n\nHTTP\n",
        g.edges.len()
    );
    out.push_str(&table(&http));
    out.push_str("\nTCP (kernel)\n");
    out.push_str(&table(&tcp));
    out
}

/// `namespace/name`, services marked as such.
fn label(n: &Node) -> String {
    match n.kind {
        NodeKind::Workload => format!("{}/{}", n.namespace, n.name),
        NodeKind::Service => format!("{}/{} (svc)", n.namespace, n.name),
    }
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (cell, w) in r.iter().zip(&widths) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_http_and_tcp_edges_in_columns() {
        let json = r#"{"window_s":10.0,
            "nodes":[{"id":"workload:shop/web","kind":"workload","namespace":"shop","name":"web"},
                     {"id":"service:shop/api","kind":"service","namespace":"shop","name":"api"},
                     {"id":"service:shop/db","kind":"service","namespace":"shop","name":"db"}],
            "edges":[{"source":"workload:shop/web","target":"service:shop/api","protocol":"http",
                      "requests":250,"errors":101,"rps":12.5,"error_rate":0.404,"p99_ms":4.95},
                     {"source":"workload:shop/web","target":"service:shop/db","protocol":"tcp",
                      "connections":10,"bytes":50,"cps":null,"bps":null}]}"#;
        let g: Graph = serde_json::from_str(json).unwrap();
        let text = render(&g);
        let want = "meshpath top · 2 edges · rates over 10.0 s

HTTP
SOURCE    DESTINATION     REQUESTS  5XX  RPS    5XX%   P99 MS
shop/web  shop/api (svc)  250       101  12.50  40.4%  5.0

TCP (kernel)
SOURCE    DESTINATION    CONNECTIONS  BYTES  CONN/S  BYTES/S
shop/web  shop/db (svc)  10           50     -       -
";
        assert_eq!(text, want);
    }
}
