//! The live service graph after real traffic: `/ui` loaded in a real headless Chromium (its
//! JavaScript polls `/ui/graph.json` and draws SVG, whose edges carry their figures as data
//! attributes) and `meshpath top --once`, both checked against what the clients sent: an HTTP
//! service behind the node proxy with a 50% fault abort for one user, and a TCP service on the
//! kernel path. Chromium: `MESHPATH_CHROMIUM=$(bash scripts/chromium.sh)`; skipped without it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use meshpath_tests::agent::{meshpath, steered_to_proxy};
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{addr, run_until, skip_line, skip_unless, wait_until, Cluster, AGENT};

const WEB: &str = "10.96.0.50";
const DB: &str = "10.96.0.51";
const WAIT: Duration = Duration::from_secs(10);
/// Rates over the whole test: the baseline sample stays inside the window.
const WINDOW: u32 = 300;

/// `web` (HTTP on 8080, pod 1) aborts half of jason's requests with 503 and passes the rest.
const WEB_VS: &str = "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: web
spec:
  hosts:
  - web
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      abort:
        httpStatus: 503
        percentage:
          value: 50
    route:
    - destination:
        host: web
  - route:
    - destination:
        host: web
";

fn pod(name: &str, app: &str, ip: std::net::Ipv4Addr) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: {app}\n    version: v1\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n")
}

/// Pod 0 is `client`, pod 1 `web-v1` behind `web` (steered to the proxy by its VirtualService),
/// pod 2 `db-1` behind `db` (TCP, kernel path).
fn cluster() -> Cluster {
    let c = Cluster::with_proxy(3, |_| vec!["--tcp-metrics-sample-ms".into(), "100".into()]);
    let ip = |i| c.node.pod(i).ip();
    c.node
        .spawn_server(1, "web-v1", &[], &[], &[8080])
        .expect("web server");
    c.node
        .spawn_server(2, "db-1", &[5432], &[], &[])
        .expect("db server");
    let web_svc = format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  clusterIP: {WEB}\n  ports:\n  - name: http\n    port: 8080\n  selector:\n    app: web\n");
    let web_eps = endpoint_slice("web", 8080, "TCP", &[Ep::ready(ip(1))])
        .replace("name: p\n", "name: http\n");
    c.write(
        "apps.yaml",
        &docs(&[
            pod("client", "client", ip(0)),
            pod("web-v1", "web", ip(1)),
            pod("db-1", "db", ip(2)),
            web_svc,
            web_eps,
            service("db", DB, 5432, "5432", "TCP", ""),
            endpoint_slice("db", 5432, "TCP", &[Ep::ready(ip(2))]),
            WEB_VS.into(),
        ]),
    );
    c.wait_status("web steered, db programmed", WAIT, |s| {
        steered_to_proxy(s, "default/web:")
            && meshpath_tests::agent::service(s, "default/db:").is_some()
    });
    c
}

/// `MESHPATH_CHROMIUM`, or `None` after printing why the test is skipped.
fn chromium() -> Option<PathBuf> {
    let reason = match std::env::var_os("MESHPATH_CHROMIUM") {
        Some(p) if Path::new(&p).is_file() => return Some(p.into()),
        Some(p) => format!("MESHPATH_CHROMIUM={} is not a file", p.to_string_lossy()),
        None => {
            "MESHPATH_CHROMIUM is not set (MESHPATH_CHROMIUM=$(bash scripts/chromium.sh))".into()
        }
    };
    let test = std::thread::current().name().unwrap_or("<test>").to_owned();
    // Past libtest's capture, as the harness's own skips are.
    let _ = writeln!(std::io::stdout().lock(), "{}", skip_line(&test, &reason));
    None
}

/// Headless Chromium on `url` with `args`: its stdout. Virtual time lets the page's timers (its
/// polls) run ahead while every fetch still really goes to the agent.
fn run_chromium(bin: &Path, profile: &Path, url: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(["--window-size=1280,720", "--virtual-time-budget=5000"])
    .args(args)
    .arg(url);
    let out = run_until(cmd, Duration::from_secs(90), &|| false).expect("running chromium");
    assert!(
        out.status.success(),
        "chromium: {}\n{}",
        out.status,
        out.stderr
    );
    out.stdout
}

/// The `data-*` attributes of every `<g class="edge ...">` in the dumped DOM, plus its class.
fn edges(dom: &str) -> Vec<BTreeMap<String, String>> {
    dom.match_indices("<g class=\"edge")
        .map(|(at, _)| {
            let tag = &dom[at..at + dom[at..].find('>').expect("tag end")];
            let mut attrs = BTreeMap::new();
            let mut rest = tag;
            while let Some((key, after)) = rest.split_once("=\"") {
                let key = key.rsplit(' ').next().unwrap_or_default();
                let (value, tail) = after.split_once('"').expect("attribute end");
                attrs.insert(key.to_owned(), value.to_owned());
                rest = tail;
            }
            attrs
        })
        .collect()
}

fn get(admin: &str, path: &str) -> String {
    let mut s = TcpStream::connect(admin).expect("admin listener");
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").expect("request");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("response");
    let (head, body) = buf.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    body.to_owned()
}

fn graph(admin: &str) -> serde_json::Value {
    serde_json::from_str(&get(admin, &format!("/ui/graph.json?window={WINDOW}"))).expect("json")
}

/// The graph's `protocol` edge from `source` to `target`.
fn edge<'a>(
    g: &'a serde_json::Value,
    source: &str,
    target: &str,
    protocol: &str,
) -> Option<&'a serde_json::Value> {
    g["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == source && e["target"] == target && e["protocol"] == protocol)
}

const CLIENT: &str = "workload:default/client";
const WEB_SVC: &str = "service:default/web";
const WEB_V1: &str = "workload:default/web-v1";
const DB_SVC: &str = "service:default/db";
const DB_1: &str = "workload:default/db-1";

#[test]
fn service_graph_in_chromium_and_top_match_the_traffic_sent() {
    skip_unless!(AGENT);
    let Some(chromium) = chromium() else { return };
    let c = cluster();
    let admin = c.agent.admin_addr().expect("admin address").to_owned();
    let http = |count: u32, header: Option<&str>| {
        let (a, n) = (format!("{WEB}:8080"), count.to_string());
        let mut args = vec!["http", "--addr", &a, "--count", &n];
        args.extend(header.map(|h| ["--header", h]).into_iter().flatten());
        let v = c.node.run_client(0, &args).expect("http client");
        serde_json::from_value::<meshpath_tests::ClientReport>(v).expect("report")
    };

    // Before the window: 50 plain requests, all answered. The first graph has them, without
    // rates (no earlier sample).
    let plain = http(50, None);
    assert_eq!(plain.count("web-v1"), 50, "{plain:?}\n{}", c.agent.log());
    let first = graph(&admin);
    assert!(first["window_s"].is_null(), "{first:#}");
    let e = edge(&first, CLIENT, WEB_SVC, "http").unwrap_or_else(|| panic!("{first:#}"));
    assert_eq!(
        (e["requests"].as_u64(), e["rps"].is_null()),
        (Some(50), true),
        "{e}"
    );
    let t0 = Instant::now();

    // In the window: 200 of jason's requests (about half aborted) and 10 TCP connections.
    let jason = http(200, Some("end-user: jason"));
    let aborted = jason
        .answers
        .get("503 fault filter abort")
        .copied()
        .unwrap_or(0);
    assert_eq!(aborted + jason.count("web-v1"), 200, "{jason:?}");
    let tcp = c.node.tcp(0, addr(DB, 5432), 10).expect("tcp client");
    assert_eq!(tcp.count("db-1"), 10, "{tcp:?}");
    // Each connection read the server's name line, "db-1\n": 5 bytes, nothing sent.
    let mut last = serde_json::Value::Null;
    let tcp_done = wait_until(WAIT, || {
        last = graph(&admin);
        edge(&last, CLIENT, DB_SVC, "tcp")
            .is_some_and(|e| e["connections"] == 10 && e["bytes"] == 50)
    });
    assert!(
        tcp_done,
        "TCP edge never showed 10 connections, 50 bytes:\n{last:#}"
    );

    let url = format!("http://{admin}/ui?window={WINDOW}");
    let profile = c.node.work_dir().join("chromium-profile");
    let dom = run_chromium(&chromium, &profile, &url, &["--dump-dom"]);
    let elapsed = t0.elapsed().as_secs_f64();
    // The page polled more than once (it refreshes live); its rates are over the window since
    // the first sample.
    let svg_attr = |k: &str| {
        dom.split_once(&format!("{k}=\""))
            .and_then(|(_, r)| r.split('"').next()?.parse::<f64>().ok())
    };
    let updates = svg_attr("data-updates");
    assert!(
        updates.is_some_and(|n| n >= 2.0),
        "updates {updates:?}:\n{dom}"
    );
    let window = svg_attr("data-window").unwrap_or_else(|| panic!("no window:\n{dom}"));
    assert!(
        window > 0.0 && window < elapsed + 1.0,
        "window {window} s, {elapsed:.1} s since t0"
    );
    let drawn = edges(&dom);
    let find = |s: &str, t: &str| {
        drawn
            .iter()
            .find(|e| e["data-source"] == s && e["data-target"] == t)
            .unwrap_or_else(|| panic!("no edge {s} → {t} drawn:\n{dom}"))
    };
    let num = |e: &BTreeMap<String, String>, k: &str| -> f64 {
        e.get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} missing in {e:?}"))
    };
    // client → web → web-v1 (HTTP), client → db → db-1 (TCP), and the kernel's view of the
    // client's connections to web (steered to the proxy, so no destination workload).
    assert_eq!(drawn.len(), 5, "{drawn:#?}");
    let steered = drawn
        .iter()
        .find(|e| e["data-target"] == WEB_SVC && e["data-protocol"] == "tcp")
        .unwrap_or_else(|| panic!("no TCP edge to web:\n{dom}"));
    assert!(num(steered, "data-connections") >= 1.0, "{steered:?}");

    // client → web: every request (250), every abort; the rate, 5xx rate and p99 over the
    // window see jason's 200 only.
    let to_web = drawn
        .iter()
        .find(|e| e["data-target"] == WEB_SVC && e["data-protocol"] == "http")
        .unwrap_or_else(|| panic!("no HTTP edge to web:\n{dom}"));
    assert_eq!(to_web["data-source"], CLIENT);
    assert_eq!(num(to_web, "data-requests"), 250.0, "{to_web:?}");
    assert_eq!(num(to_web, "data-errors"), aborted as f64, "{to_web:?}");
    let error_rate = num(to_web, "data-error-rate");
    assert!(
        (error_rate - aborted as f64 / 200.0).abs() < 1e-9,
        "{to_web:?} vs {aborted}/200"
    );
    // Binomial(200, 0.5): sd 0.035; ±0.15 is over 4 sd.
    assert!((0.35..=0.65).contains(&error_rate), "{to_web:?}");
    // The last poll's rate: the 200 requests over that poll's window.
    let rps = num(to_web, "data-rps");
    assert!(
        (rps * window - 200.0).abs() < 1e-6,
        "{to_web:?} over {window} s"
    );
    assert!(num(to_web, "data-p99-ms") > 0.0, "{to_web:?}");
    assert!(
        to_web["class"].contains("failure"),
        "≥20% 5xx is drawn red: {to_web:?}"
    );

    // web → web-v1: only what reached the pod.
    let to_pod = find(WEB_SVC, WEB_V1);
    assert_eq!(
        num(to_pod, "data-requests"),
        (250 - aborted) as f64,
        "{to_pod:?}"
    );
    assert_eq!(num(to_pod, "data-errors"), 0.0, "{to_pod:?}");

    // The kernel path's TCP edges, drawn as such.
    for (s, t) in [(CLIENT, DB_SVC), (DB_SVC, DB_1)] {
        let e = find(s, t);
        assert_eq!(e["data-protocol"], "tcp", "{e:?}");
        assert!(e["class"].split(' ').any(|c| c == "tcp"), "{e:?}");
        assert_eq!(
            (num(e, "data-connections"), num(e, "data-bytes")),
            (10.0, 50.0),
            "{e:?}"
        );
        assert!(
            num(e, "data-cps") > 0.0 && num(e, "data-bps") > 0.0,
            "{e:?}"
        );
    }

    // The picture, for people.
    let png = c.node.work_dir().join("ui-graph.png");
    let shot = format!("--screenshot={}", png.display());
    run_chromium(&chromium, &profile, &url, &[&shot]);
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "{} bytes",
        bytes.len()
    );
    if let Some(out) = std::env::var_os("MESHPATH_UI_SCREENSHOT_OUT") {
        std::fs::copy(&png, &out).expect("copying the screenshot");
    }

    // `meshpath top --once`: the same edges and totals as a table.
    let window = WINDOW.to_string();
    let table = meshpath(["top", "--once", "--window", &window, "--admin-addr", &admin])
        .expect("meshpath top");
    if let Some(out) = std::env::var_os("MESHPATH_TOP_OUT") {
        std::fs::write(&out, &table).expect("writing top's output");
    }
    // The figures after SOURCE and DESTINATION of their row.
    let row = |src: &str, dst: &str| -> Vec<String> {
        table
            .lines()
            .find_map(|l| {
                let rest = l.strip_prefix(src)?.trim_start().strip_prefix(dst)?;
                rest.starts_with(' ')
                    .then(|| rest.split_whitespace().map(str::to_owned).collect())
            })
            .unwrap_or_else(|| panic!("no row {src} → {dst}:\n{table}"))
    };
    // REQUESTS, 5XX, RPS, 5XX%, P99 MS.
    let web_row = row("default/client", "default/web (svc)");
    assert_eq!(
        web_row[..2],
        ["250".to_owned(), aborted.to_string()],
        "{table}"
    );
    let pct = format!("{:.1}%", 100.0 * aborted as f64 / 200.0);
    assert_eq!(web_row[3], pct, "{table}");
    let pod_row = row("default/web (svc)", "default/web-v1");
    assert_eq!(
        pod_row[..2],
        [(250 - aborted).to_string(), "0".to_owned()],
        "{table}"
    );
    // CONNECTIONS, BYTES, CONN/S, BYTES/S.
    let db_row = row("default/client", "default/db (svc)");
    assert_eq!(db_row[..2], ["10".to_owned(), "50".to_owned()], "{table}");
}
