//! The agent's one metrics registry, scraped from its admin listener after real traffic: the
//! kernel counters in `/stats` (Envoy text) and in `/metrics` (Prometheus text) come from the
//! same maps and agree, and the whole `/metrics` text (kernel, TCP, sync and DNS families) reads
//! back through the Python `prometheus_client` OpenMetrics parser (`MESHPATH_PROM_PYTHON`,
//! from `bash scripts/prom-python.sh`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{addr, skip_unless, wait_until, Cluster, AGENT};

const VIP: &str = "10.96.0.44";
const WAIT: Duration = Duration::from_secs(10);

fn get(c: &Cluster, path: &str) -> String {
    let admin = c.agent.admin_addr().expect("admin address");
    let mut s = TcpStream::connect(admin).expect("admin listener");
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .expect("request");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("response");
    let (head, body) = buf.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.0 200"), "{path}: {head}");
    body.to_owned()
}

/// `meshpath.service.<name>|VIP:80.connects: N` from `/stats`: (name, N).
fn stats_connects(stats: &str) -> Option<(String, u64)> {
    let prefix = "meshpath.service.";
    let line = stats
        .lines()
        .find(|l| l.starts_with(prefix) && l.contains(&format!("|{VIP}:80.connects: ")))?;
    let (key, v) = line.rsplit_once(": ")?;
    let name = key.strip_prefix(prefix)?.split('|').next()?.to_owned();
    Some((name, v.parse().ok()?))
}

/// The value of the sample `name{labels}` in Prometheus text.
fn sample(text: &str, name_and_labels: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("integer sample"))
}

#[test]
fn stats_and_metrics_show_the_same_kernel_counters() {
    skip_unless!(AGENT);
    let c = Cluster::start(2, &[], &[]);
    c.node
        .spawn_server(1, "web-1", &[8080], &[], &[])
        .expect("server");
    let web_ip = c.node.pod(1).ip();
    c.write(
        "web.yaml",
        &docs(&[
            service("web", VIP, 80, "8080", "TCP", ""),
            endpoint_slice("web", 8080, "TCP", &[Ep::ready(web_ip)]),
        ]),
    );
    c.wait_status("web programmed", WAIT, |s| {
        meshpath_tests::agent::service(s, "default/web:").is_some()
    });
    const N: u64 = 4;
    let r = c.node.tcp(0, addr(VIP, 80), N as u32).expect("tcp client");
    assert_eq!(r.ok(), N, "{r:?}");

    let mut stats = String::new();
    let counted = wait_until(WAIT, || {
        stats = get(&c, "/stats");
        stats_connects(&stats).is_some_and(|(_, n)| n == N)
    });
    assert!(counted, "{N} connects never showed in /stats:\n{stats}");
    let (name, _) = stats_connects(&stats).expect("service line");
    // No traffic runs between the two scrapes, so the counters must be equal.
    let metrics = get(&c, "/metrics");
    let series =
        format!("meshpath_service_connects_total{{service=\"{name}\",frontend=\"{VIP}:80\"}}");
    assert_eq!(sample(&metrics, &series), Some(N), "{series}:\n{metrics}");
    let translated = stats
        .lines()
        .find_map(|l| l.strip_prefix("meshpath.connect_translated: "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("connect_translated in /stats");
    assert!(translated >= N, "{stats}");
    assert_eq!(
        sample(
            &metrics,
            "meshpath_kernel_events_total{reason=\"connect_translated\"}"
        ),
        Some(translated),
        "{metrics}"
    );
    // The kernel's TCP metrics (on by default) are in the same registry.
    assert!(
        metrics.contains("istio_tcp_connections_opened_total{"),
        "{metrics}"
    );
    parse_with_prometheus_client(&metrics);
}

/// Every family must parse; the kernel, TCP, sync and DNS ones must be there.
fn parse_with_prometheus_client(text: &str) {
    let Ok(python) = std::env::var("MESHPATH_PROM_PYTHON") else {
        eprintln!("skipped the parser check: MESHPATH_PROM_PYTHON is not set (bash scripts/prom-python.sh)");
        return;
    };
    let script = "import sys\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
fams = list(text_string_to_metric_families(sys.stdin.read()))\n\
print(' '.join(sorted(f.name for f in fams)))\n";
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "parser: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families = String::from_utf8(out.stdout).expect("utf-8");
    for f in [
        "meshpath_kernel_events",
        "meshpath_service_connects",
        "meshpath_service_active_connections",
        "istio_tcp_connections_opened",
        "meshpath_sync_snapshots",
        "meshpath_dns_queries_answered",
    ] {
        assert!(
            families.split_whitespace().any(|n| n == f),
            "{f} not parsed: {families}"
        );
    }
}
