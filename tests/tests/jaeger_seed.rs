//! The seed's apps as pods behind Services, every hop steered to the node proxy, spans exported to
//! a real Jaeger and read back through its query API: a client pod's request to the gateway makes
//! one trace of three spans (client → gateway, gateway → springboot v2, springboot → data), one
//! per proxy hop, linked through the B3 headers the apps forward, named and tagged as Envoy's
//! Zipkin tracer does for Istio. The apps find each other by their default URLs (the seed's
//! Service names), resolved by the agent's DNS proxy; the pods' processes see a Kubernetes-style
//! resolv.conf through a private mount namespace (`unshare -m`, as in dns.rs).
//!
//! Needs `MESHPATH_JAEGER=$(bash scripts/jaeger.sh)` (skipped with a reason otherwise) and curl.
//! `MESHPATH_JAEGER_TRACE_OUT=FILE` writes one trace as Jaeger returned it to FILE and the
//! `istio_requests_total` lines of the same run to FILE.metrics (the README's excerpts).

#[path = "seed_apps/mod.rs"]
mod apps;
mod jaeger;

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use jaeger::{spans, Jaeger, SpanView};
use meshpath_tests::agent::steered_to_proxy;
use meshpath_tests::manifests::docs;
use meshpath_tests::{wait_until, Cluster, Node, AGENT, PROXY_IP};

const GATEWAY_VIP: &str = "10.96.0.50";
const SPRINGBOOT_VIP: &str = "10.96.0.51";
const DATA_VIP: &str = "10.96.0.52";
/// The client pod's `app` label, as Istio's `sleep` sample.
const CLIENT_APP: &str = "sleep";
/// Requests the client sends: each must become a trace of its own.
const REQUESTS: usize = 3;
const DATA_CONFIG: &str = "{\n  \"key1\": \"value1\",\n  \"key2\": \"value2\"\n}\n";

/// (Service, ClusterIP, pod index, `app` label, `version` label) of the three steered services.
const SERVICES: [(&str, &str, usize, &str, &str); 3] = [
    (
        "golang-app-gateway-svc",
        GATEWAY_VIP,
        1,
        "golang-app-gateway",
        "v1",
    ),
    (
        "springboot-app-svc",
        SPRINGBOOT_VIP,
        2,
        "springboot-app",
        "v2",
    ),
    ("golang-app-data-svc", DATA_VIP, 3, "golang-app-data", "v1"),
];

fn pod_doc(node: &Node, i: usize, name: &str, app: &str, version: &str) -> String {
    let ip = node.pod(i).ip();
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: {app}\n    version: {version}\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n")
}

/// The Services (as the seed's artifacts define them, with fixed ClusterIPs), a Pod and an
/// EndpointSlice per app, the client's Pod, a VirtualService per Service (the seed's springboot
/// one routes to subset v2) and springboot's DestinationRule.
fn manifests(node: &Node) -> String {
    let mut parts = vec![pod_doc(node, 0, "sleep-0", CLIENT_APP, "v1")];
    for (svc, vip, i, app, version) in SERVICES {
        let ip = node.pod(i).ip();
        let pod = format!("{app}-{version}-0");
        parts.push(format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {svc}\n  namespace: default\n  labels:\n    app: {app}\nspec:\n  clusterIP: {vip}\n  ports:\n  - name: http\n    port: 8080\n  selector:\n    app: {app}\n"));
        parts.push(pod_doc(node, i, &pod, app, version));
        parts.push(format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {svc}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\nendpoints:\n- addresses: [\"{ip}\"]\n  targetRef: {{kind: Pod, name: {pod}}}\n"));
        let subset = if app == "springboot-app" {
            "\n        subset: v2"
        } else {
            ""
        };
        parts.push(format!("apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: {svc}\n  namespace: default\nspec:\n  hosts:\n  - {svc}\n  http:\n  - route:\n    - destination:\n        host: {svc}{subset}\n"));
    }
    parts.push("apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: springboot-app-svc\n  namespace: default\nspec:\n  host: springboot-app-svc.default.svc.cluster.local\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n".into());
    docs(&parts)
}

/// `program args` in pod `i` with the pod resolv.conf bind-mounted over /etc/resolv.conf in a
/// private mount namespace, the environment cleared but for PATH, HOME and `env`.
fn pod_command(node: &Node, i: usize, program: &Path, env: &[(&str, String)]) -> Command {
    let mut cmd = node.pod(i).command("unshare").expect("pod command");
    cmd.args([
        "-m",
        "sh",
        "-c",
        r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#,
    ])
    .arg(node.work_dir().join("resolv.conf"))
    .arg(program)
    .env_clear()
    .stdin(Stdio::null());
    for var in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    cmd
}

/// Runs `f` on a thread inside the node namespace, where the pods' addresses are reachable.
fn in_node_netns<T: Send>(node: &Node, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(format!("/var/run/netns/{}", node.node_netns_name())).expect("node netns");
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on an open namespace fd; CLONE_NEWNET moves only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("node netns thread")
    })
}

/// Starts the seed app `app` in pod `i` (listening on :8080, its default) and waits until it
/// answers HTTP on the pod's address; returns its stdout file (the per-request trace lines).
fn start_app(node: &Node, i: usize, app: &str, env: &[(&str, String)]) -> PathBuf {
    let out = node.work_dir().join(format!("{app}.out"));
    let err = node.work_dir().join(format!("{app}.err"));
    let mut cmd = pod_command(node, i, &apps::launcher(app), env);
    cmd.stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"));
    let pid = node.pod(i).spawn(cmd).expect("starting the app");
    let addr = std::net::SocketAddr::from((node.pod(i).ip(), 8080));
    let logs = || {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- {app} stdout\n{}--- {app} stderr\n{}",
            read(&out),
            read(&err)
        )
    };
    // A path no app forwards upstream (each answers 404 itself): readiness makes no span.
    let ready = in_node_netns(node, || {
        wait_until(apps::START_TIMEOUT, || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").map(|(_, s)| s.starts_with('Z'));
            assert_ne!(state, Some(true), "{app} exited:\n{}", logs());
            apps::http(addr, "GET", "/readiness-probe", &[], b"").is_ok()
        })
    });
    assert!(ready, "{app} did not answer on {addr}:\n{}", logs());
    out
}

/// `curl http://golang-app-gateway-svc:8080/` from the client pod: status and body.
fn curl_gateway(node: &Node) -> (u16, String) {
    let curl = Path::new("/usr/bin/curl");
    let mut cmd = pod_command(node, 0, curl, &[]);
    cmd.args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .arg("http://golang-app-gateway-svc:8080/");
    let out = cmd.output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = code
        .parse()
        .unwrap_or_else(|_| panic!("curl: {text:?} {stderr}"));
    (code, body.to_owned())
}

fn scrape_metrics(c: &Cluster) -> String {
    let admin = c
        .agent
        .admin_addr()
        .expect("admin address")
        .parse()
        .expect("addr");
    let r = apps::http(admin, "GET", "/metrics", &[], b"").expect("scraping /metrics");
    r.text()
}

#[test]
fn a_client_request_through_the_steered_seed_apps_is_one_trace_of_three_hop_spans_in_jaeger() {
    let test =
        "a_client_request_through_the_steered_seed_apps_is_one_trace_of_three_hop_spans_in_jaeger";
    if meshpath_tests::privileged(AGENT).is_none() {
        return;
    }
    if !Path::new("/usr/bin/curl").is_file() {
        jaeger::skip(test, "/usr/bin/curl not found");
        return;
    }
    let run = format!("meshpath-jaeger-e2e-{}", std::process::id());
    let Some(j) = Jaeger::start(test, &run) else {
        return;
    };
    let collector = format!("http://{}", j.zipkin);
    let c = Cluster::with_proxy(4, |_| {
        let args = ["--trace-collector", &collector, "--trace-sampling", "100"];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        // The pods' resolver (nothing listens there: the agent answers every Service name).
        args.extend(["--dns-upstream".into(), PROXY_IP.into()]);
        args
    });
    let work = c.node.work_dir();
    std::fs::write(
        work.join("resolv.conf"),
        format!("nameserver {PROXY_IP}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"),
    )
    .expect("resolv.conf");
    c.write("seed.yaml", &manifests(&c.node));
    for (svc, ..) in SERVICES {
        c.wait_status("steered to the proxy", Duration::from_secs(10), |s| {
            steered_to_proxy(s, &format!("default/{svc}:"))
        });
    }
    c.wait_log(&["DNS listener open"], Duration::from_secs(10));

    std::fs::write(work.join("config-data.json"), DATA_CONFIG).expect("config");
    let config = work.join("config-data.json").display().to_string();
    let data_log = start_app(&c.node, 3, "golang-app-data", &[("CONFIG_FILE", config)]);
    start_app(
        &c.node,
        2,
        "springboot-app",
        &[("APP_VERSION", "v2".into())],
    );
    start_app(&c.node, 1, "golang-app-gateway", &[]);

    let mut bodies = Vec::new();
    for _ in 0..REQUESTS {
        let (status, body) = curl_gateway(&c.node);
        assert_eq!(status, 200, "{body}\n{}", c.agent.log());
        assert!(
            body.contains("springboot app V2") && body.contains("\"key2\": \"value2\""),
            "{body}"
        );
        bodies.push(body);
    }

    let client_service = format!("{CLIENT_APP}.default");
    let traces = j.traces(&client_service, REQUESTS, 3);
    let data_seen = std::fs::read_to_string(&data_log).unwrap_or_default();
    let pod_ips: Vec<Ipv4Addr> = c.node.pods().iter().map(|p| p.ip()).collect();
    for t in &traces {
        check_trace(t, &data_seen, &pod_ips, bodies[0].len());
    }
    if let Ok(out) = std::env::var("MESHPATH_JAEGER_TRACE_OUT") {
        std::fs::write(&out, serde_json::to_vec_pretty(&traces[0]).expect("json")).expect("out");
    }

    let metrics = scrape_metrics(&c);
    let requests: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    eprintln!("{}", requests.join("\n"));
    for (svc, ..) in SERVICES {
        let name = format!("destination_service_name=\"{svc}\"");
        let line = requests
            .iter()
            .find(|l| l.contains(&name) && l.contains("response_code=\"200\""));
        let count = line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        assert_eq!(count, Some(REQUESTS as f64), "{svc}: {requests:#?}");
    }
    if let Ok(out) = std::env::var("MESHPATH_JAEGER_TRACE_OUT") {
        std::fs::write(format!("{out}.metrics"), requests.join("\n")).expect("out");
    }
}

/// One trace: a span per hop, each the child of the previous hop's, as Istio names and tags them.
fn check_trace(trace: &serde_json::Value, data_seen: &str, pod_ips: &[Ipv4Addr], body: usize) {
    let all = spans(trace);
    let by_service = |s: &str| -> &SpanView {
        let mut it = all.iter().filter(|v| v.service == s);
        let one = it
            .next()
            .unwrap_or_else(|| panic!("no span of {s}: {all:#?}"));
        assert!(it.next().is_none(), "two spans of {s}: {all:#?}");
        one
    };
    let hops = [
        by_service(&format!("{CLIENT_APP}.default")),
        by_service("golang-app-gateway.default"),
        by_service("springboot-app.default"),
    ];
    let trace_id = trace["traceID"].as_str().expect("traceID");
    assert_eq!(
        trace_id.len(),
        32,
        "128-bit trace ids, as Istio's proxies make"
    );
    let request_id = hops[0]
        .tag("guid:x-request-id")
        .expect("x-request-id")
        .to_owned();
    for (k, hop) in hops.iter().enumerate() {
        let (svc, _, i, app, version) = SERVICES[k];
        let (src_app, src_ns) = hop.service.split_once('.').expect("app.namespace");
        assert_eq!(
            hop.operation,
            format!("{svc}.default.svc.cluster.local:8080/*")
        );
        let subset = if version == "v2" { "v2" } else { "" };
        let cluster = format!("outbound|8080|{subset}|{svc}.default.svc.cluster.local");
        for (key, want) in [
            ("http.url", format!("http://{svc}:8080/")),
            ("http.method", "GET".into()),
            ("http.status_code", "200".into()),
            ("http.protocol", "HTTP/1.1".into()),
            ("upstream_cluster", cluster),
            ("response_flags", "-".into()),
            ("guid:x-request-id", request_id.clone()),
            ("istio.canonical_service", src_app.into()),
            ("istio.namespace", src_ns.into()),
            ("istio.mesh_id", "cluster.local".into()),
            ("component", "proxy".into()),
            ("span.kind", "client".into()),
        ] {
            assert_eq!(
                hop.tag(key),
                Some(want.as_str()),
                "{app} hop, tag {key}: {hop:#?}"
            );
        }
        let upstream = format!("{}:8080", pod_ips[i]);
        assert_eq!(
            hop.tag("upstream_address"),
            Some(upstream.as_str()),
            "{hop:#?}"
        );
        // Each hop's client, and the body sizes (GETs; the answers' content-lengths).
        let agent = ["curl/", "Go-http-client/", "Java-http-client/"][k];
        let user_agent = hop.tag("user_agent").unwrap_or_default();
        assert!(user_agent.starts_with(agent), "{hop:#?}");
        assert_eq!(hop.tag("request_size"), Some("0"), "{hop:#?}");
        let response: Option<usize> = hop.tag("response_size").and_then(|v| v.parse().ok());
        match k {
            0 => assert_eq!(response, Some(body), "{hop:#?}"),
            2 => assert_eq!(response, Some(DATA_CONFIG.len()), "{hop:#?}"),
            _ => assert!(response.is_some_and(|n| n > DATA_CONFIG.len()), "{hop:#?}"),
        }
        match k {
            0 => assert!(
                hop.parents.is_empty(),
                "the client's hop is the root: {hop:#?}"
            ),
            _ => assert_eq!(hop.parents, [hops[k - 1].span_id.clone()], "{all:#?}"),
        }
    }
    // Each hop waits for the next: outer spans start first and last longer.
    for w in hops.windows(2) {
        let (outer, inner) = (w[0], w[1]);
        assert!(outer.start_us <= inner.start_us, "{all:#?}");
        assert!(outer.duration_us >= inner.duration_us, "{all:#?}");
        assert!(
            outer.start_us + outer.duration_us >= inner.start_us + inner.duration_us,
            "{all:#?}"
        );
    }
    // golang-app-data saw the last hop's context: this trace, the springboot hop's span.
    let seen = data_seen
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    let matching = seen
        .filter(|l| l["trace"]["x-b3-traceid"] == trace_id)
        .map(|l| {
            l["trace"]["x-b3-spanid"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect::<Vec<_>>();
    assert_eq!(matching, [hops[2].span_id.clone()], "{data_seen}");
}
