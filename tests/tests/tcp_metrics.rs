//! Istio's TCP metrics measured in the kernel (`istio_tcp_*` on the agent's `/metrics`): opens,
//! closes and exact byte counts of connections through a ClusterIP, labelled with the workloads
//! of the pods on both ends; a live connection's bytes show before it closes (sampled by the
//! agent's TCP socket iterator), exactly, across several samples, and its close adds only the
//! rest; the off switch leaves the series out.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{addr, skip_unless, wait_until, Cluster, Proxy, Source, AGENT};

const VIP: &str = "10.96.0.40";
const WAIT: Duration = Duration::from_secs(10);

/// One sample of the text exposition: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus/OpenMetrics text samples (comments skipped), quoted label values with the
/// format's escapes. Panics on a malformed line: a broken exposition must fail the test.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("no value in {line:?}"),
        };
        let mut labels = BTreeMap::new();
        let mut chars = rest.chars().peekable();
        if chars.peek() == Some(&'{') {
            chars.next();
            loop {
                let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                assert_eq!(chars.next(), Some('"'), "{line}");
                let mut val = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => val.push('\n'),
                            Some(e) => val.push(e),
                            None => panic!("{line}"),
                        },
                        '"' => break,
                        c => val.push(c),
                    }
                }
                labels.insert(key.trim_start_matches(',').to_owned(), val);
                match chars.next() {
                    Some(',') if chars.peek() == Some(&'}') => {
                        chars.next();
                        break;
                    }
                    Some(',') => continue,
                    Some('}') => break,
                    other => panic!("{other:?} in {line}"),
                }
            }
        }
        let value: String = chars.collect();
        let value = value.split_whitespace().next().unwrap_or_default();
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value: value.parse().unwrap_or_else(|e| panic!("{e}: {line}")),
        });
    }
    out
}

fn scrape(c: &Cluster) -> String {
    let admin = c.agent.admin_addr().expect("admin address");
    let mut s = TcpStream::connect(admin).expect("admin listener");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("response");
    let (head, body) = buf.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    body.to_owned()
}

/// Every label Istio's TCP metrics carry: Kiali drops series that lack one.
const LABELS: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

/// The four `istio_tcp_*` values of the client → web pair: (opened, closed, sent, received).
fn pair(text: &str) -> Option<[u64; 4]> {
    let samples = parse(text);
    let mut v = [None; 4];
    for s in samples.iter().filter(|s| s.name.starts_with("istio_tcp_")) {
        let mut keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        let mut want = LABELS.to_vec();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want, "{}: label set", s.name);
        let l = |k: &str| s.labels[k].as_str();
        if (l("source_workload"), l("source_app"), l("source_version"))
            != ("client", "client", "v1")
        {
            continue;
        }
        assert_eq!(
            (
                l("reporter"),
                l("source_workload_namespace"),
                l("destination_workload"),
                l("destination_app"),
                l("destination_version"),
                l("destination_service"),
                l("request_protocol"),
            ),
            (
                "source",
                "default",
                "web-1",
                "web",
                "v2",
                "web.default.svc.cluster.local",
                "tcp"
            ),
            "{s:?}"
        );
        let i = match s.name.as_str() {
            "istio_tcp_connections_opened_total" => 0,
            "istio_tcp_connections_closed_total" => 1,
            "istio_tcp_sent_bytes_total" => 2,
            "istio_tcp_received_bytes_total" => 3,
            _ => continue,
        };
        assert!(v[i].is_none(), "two series for one pair: {text}");
        v[i] = Some(s.value as u64);
    }
    Some([v[0]?, v[1]?, v[2]?, v[3]?])
}

/// Pod 0 (`client`, app=client version=v1) and pod 1 (`web-1`, app=web version=v2, serving
/// TCP 8080 behind `VIP:80`), with Pod objects carrying their labels and IPs.
fn cluster(agent_args: &[&str]) -> Cluster {
    let c = Cluster::start(2, &[], agent_args);
    c.node
        .spawn_server(1, "web-1", &[8080], &[], &[])
        .expect("server");
    let (client_ip, web_ip) = (c.node.pod(0).ip(), c.node.pod(1).ip());
    let pod = |name: &str, app: &str, version: &str, ip| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: {app}\n    version: {version}\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n")
    };
    c.write(
        "web.yaml",
        &docs(&[
            pod("client", "client", "v1", client_ip),
            pod("web-1", "web", "v2", web_ip),
            service("web", VIP, 80, "8080", "TCP", ""),
            endpoint_slice("web", 8080, "TCP", &[Ep::ready(web_ip)]),
        ]),
    );
    c.wait_status("web programmed", WAIT, |s| {
        meshpath_tests::agent::service(s, "default/web:").is_some()
    });
    c
}

#[test]
fn tcp_metrics_count_connections_and_exact_bytes_per_workload_pair() {
    skip_unless!(AGENT);
    let c = cluster(&["--tcp-metrics-sample-ms", "100"]);
    const N: u64 = 5;
    // Each connection: the server writes its name line ("web-1\n", 6 bytes), the client reads it
    // and closes without writing.
    let r = c.node.tcp(0, addr(VIP, 80), N as u32).expect("tcp client");
    assert_eq!(r.ok(), N, "{r:?}");

    // A long-lived connection: its bytes must show while it is still open.
    let mut hold = c.node.hold(0, addr(VIP, 80)).expect("hold");
    let mut echoed = 0u64;
    let mut last = String::new();
    let live = wait_until(WAIT, || {
        assert_eq!(hold.echo("hello").expect("echo"), "hello");
        echoed += 1;
        last = scrape(&c);
        pair(&last)
            .is_some_and(|[opened, closed, sent, _]| opened == N + 1 && closed == N && sent > 0)
    });
    assert!(live, "live connection's bytes never showed:\n{last}");
    hold.close().expect("close hold");

    // Client side: sent "hello\n" per echo; received the name line per connection (N + 1 of
    // them) plus the echoes.
    let want = [N + 1, N + 1, 6 * echoed, 6 * (N + 1) + 6 * echoed];
    let done = wait_until(WAIT, || {
        last = scrape(&c);
        pair(&last) == Some(want)
    });
    assert!(
        done,
        "want [opened, closed, sent, received] = {want:?}, got {:?}:\n{last}",
        pair(&last)
    );
}

#[test]
fn tcp_metrics_sample_a_long_lived_connection_then_add_only_the_rest_at_close() {
    skip_unless!(AGENT);
    let c = cluster(&["--tcp-metrics-sample-ms", "200"]);
    let sampled = || meshpath_tests::agent::counter(&c.status(), "tcp_metrics_sampled");
    let mut hold = c.node.hold(0, addr(VIP, 80)).expect("hold");
    // The server's name line ("web-1\n") is the first thing the client receives.
    let (mut sent, mut received) = (0u64, 6u64);
    let mut last = String::new();
    let mut samples_seen = Vec::new();
    for round in 1..=3usize {
        // A distinct size per round: each total is only reached by sampling this round's bytes.
        let line = "x".repeat(1000 * round);
        assert_eq!(hold.echo(&line).expect("echo"), line);
        sent += line.len() as u64 + 1;
        received += line.len() as u64 + 1;
        let want = [1, 0, sent, received];
        let live = wait_until(WAIT, || {
            last = scrape(&c);
            pair(&last) == Some(want)
        });
        assert!(
            live,
            "round {round}: live connection, want [opened, closed, sent, received] = {want:?}, \
             got {:?}:\n{last}",
            pair(&last)
        );
        samples_seen.push(sampled());
    }
    // Each round's bytes came from a sample of its own (the counter counts samples that added
    // bytes), so the connection lived across at least three.
    assert!(
        samples_seen.windows(2).all(|w| w[1] > w[0]) && samples_seen[0] >= 1,
        "tcp_metrics_sampled per round: {samples_seen:?}"
    );
    hold.close().expect("close hold");
    // The close adds only what no sample took: totals equal the bytes that moved, not more.
    let want = [1, 1, sent, received];
    let done = wait_until(WAIT, || {
        last = scrape(&c);
        pair(&last).is_some_and(|[_, closed, ..]| closed == 1)
    });
    assert!(done, "close never counted:\n{last}");
    assert_eq!(pair(&last), Some(want), "{last}");
    assert_eq!(
        meshpath_tests::agent::counter(&c.status(), "tcp_metrics_sample_read_failed"),
        0
    );
}

/// sock_ops stays attached while the agent restarts (its link is pinned, as the sock_addr
/// programs' are): a connection that closes while no agent runs is still seen closing, so the
/// next agent counts it closed and its entry leaves the connection table.
#[test]
fn tcp_metrics_a_connection_closed_while_the_agent_is_down_is_counted_closed() {
    skip_unless!(AGENT);
    let args = ["--tcp-metrics-sample-ms", "100"];
    let mut c = cluster(&args);
    let mut hold = c.node.hold(0, addr(VIP, 80)).expect("hold");
    assert_eq!(hold.echo("hello").expect("echo"), "hello");
    let mut last = String::new();
    let live = wait_until(WAIT, || {
        last = scrape(&c);
        pair(&last) == Some([1, 0, 6, 12])
    });
    assert!(live, "live connection never showed:\n{last}");

    c.agent.stop().expect("SIGTERM");
    hold.close().expect("close hold while no agent runs");
    c.agent = c
        .node
        .start_agent(Source::Manifests(&c.manifests), Proxy::Off, &args)
        .expect("restarting the agent");
    let done = wait_until(WAIT, || {
        last = scrape(&c);
        pair(&last) == Some([1, 1, 6, 12])
    });
    assert!(
        done,
        "want [opened, closed, sent, received] = [1, 1, 6, 12] after the restart, got {:?}:\n{last}",
        pair(&last)
    );
}

#[test]
fn tcp_metrics_off_switch_exports_nothing() {
    skip_unless!(AGENT);
    let c = cluster(&["--tcp-metrics", "false"]);
    let r = c.node.tcp(0, addr(VIP, 80), 3).expect("tcp client");
    assert_eq!(r.ok(), 3, "{r:?}");
    let text = scrape(&c);
    assert!(
        !text.contains("istio_tcp_"),
        "metrics off but exported:\n{text}"
    );
    assert_eq!(
        meshpath_tests::agent::counter(&c.status(), "tcp_metrics_opened"),
        0
    );
}

#[test]
fn bpf_log_switch_forwards_kernel_events_to_the_agent_log() {
    skip_unless!(AGENT);
    let c = cluster(&["--bpf-log", "true"]);
    let r = c.node.tcp(0, addr(VIP, 80), 1).expect("tcp client");
    assert_eq!(r.ok(), 1, "{r:?}");
    let web_ip = c.node.pod(1).ip();
    c.wait_log(
        &[&format!("connect translated: service 1 to {web_ip}:8080")],
        WAIT,
    );
}

#[test]
fn bpf_log_is_off_by_default() {
    skip_unless!(AGENT);
    let c = cluster(&[]);
    let r = c.node.tcp(0, addr(VIP, 80), 3).expect("tcp client");
    assert_eq!(r.ok(), 3, "{r:?}");
    // The connects are counted (so the programs ran) but nothing was logged for them.
    c.wait_status("connects counted", WAIT, |s| {
        meshpath_tests::agent::svc(s, "default/web:")["connects"] == 3
    });
    assert!(
        !c.agent.log().contains("connect translated"),
        "{}",
        c.agent.log()
    );
}
