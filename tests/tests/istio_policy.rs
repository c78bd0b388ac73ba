//! Istio route policies through the real kernel, agent and node proxy: `corsPolicy` (the
//! proxy answers preflights, grants actual requests) and `retries.backoff` (retries spaced by
//! Envoy's jittered exponential back-off from the given base).

mod seed;

use std::sync::{Mutex, MutexGuard};

use meshpath_tests::manifests::docs;
use meshpath_tests::{skip_unless, Cluster, AGENT};
use seed::{app, hosts, http, serve, start, wait_steered};

const VIP: &str = "10.96.0.46";
const SVC: &str = "default/web:";

/// One test at a time: the back-off test measures time on 2 shared cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn vs(http: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: web\n  namespace: default\nspec:\n  hosts:\n  - web\n  http:\n{http}")
}

const CORS: &str = "  - route:\n    - destination:\n        host: web\n    corsPolicy:\n      allowOrigins:\n      - exact: https://app.example\n      - prefix: https://dev.\n      allowMethods: [GET, PUT]\n      allowHeaders: [x-token]\n      exposeHeaders: [x-trace]\n      maxAge: 10m\n      allowCredentials: true\n";

const SHOWN: [&str; 12] = [
    "--show-header",
    "access-control-allow-origin",
    "--show-header",
    "access-control-allow-methods",
    "--show-header",
    "access-control-max-age",
    "--show-header",
    "access-control-allow-credentials",
    "--show-header",
    "access-control-expose-headers",
    "--show-header",
    "access-control-allow-headers",
];

/// web (pod 1 answering `v1`, `status`) with the VirtualService `http:` routes; returns the
/// server's request log.
fn web(c: &Cluster, http_routes: &str, status: u16) -> std::path::PathBuf {
    let log = c.node.work_dir().join("v1.requests");
    let status = status.to_string();
    let args = [
        "serve",
        "--name",
        "v1",
        "--http",
        "8080",
        "--http-status",
        &status,
        "--http-log",
    ];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.push(log.display().to_string());
    c.node.spawn_ready(1, "v1", &args).expect("server");
    c.write(
        "web.yaml",
        &docs(&[app(c, "web", VIP, &[(1, "v1")]), vs(http_routes)]),
    );
    wait_steered(c, SVC);
    log
}

fn count(r: &meshpath_tests::ClientReport, header: &str) -> u64 {
    r.resp_headers.get(header).copied().unwrap_or(0)
}

#[test]
fn cors_preflights_are_answered_by_the_proxy_and_actual_requests_granted() {
    skip_unless!(AGENT);
    let _serial = serial();
    let c = start(2);
    let log = web(&c, CORS, 200);

    let preflight = |origin: &str| {
        let o = format!("origin: {origin}");
        let args = [
            &[
                "--count",
                "5",
                "--method",
                "OPTIONS",
                "--header",
                &o,
                "--header",
                "access-control-request-method: PUT",
            ][..],
            &SHOWN[..],
        ]
        .concat();
        http(&c, VIP, &args)
    };
    let allowed = preflight("https://dev.team");
    // Answered by the proxy: 200 with an empty body, the service never reached.
    assert_eq!(
        allowed.counts,
        [(String::new(), 5)].into(),
        "{allowed:?}\n{}",
        c.agent.log()
    );
    for h in [
        "access-control-allow-origin: https://dev.team",
        "access-control-allow-methods: GET,PUT",
        "access-control-allow-headers: x-token",
        "access-control-max-age: 600",
        "access-control-allow-credentials: true",
    ] {
        assert_eq!(count(&allowed, h), 5, "{h}: {allowed:?}");
    }
    assert_eq!(hosts(&log).len(), 0, "the service saw a preflight");

    // From an origin not allowed: forwarded to the service (Envoy's default), no grant.
    let evil = preflight("https://evil.example");
    assert_eq!(evil.counts, [("v1".to_string(), 5)].into(), "{evil:?}");
    assert!(evil.resp_headers.is_empty(), "{evil:?}");
    assert_eq!(hosts(&log).len(), 5);

    // An actual request from an allowed origin reaches the service and is granted.
    let args = [
        &["--count", "5", "--header", "origin: https://app.example"][..],
        &SHOWN[..],
    ]
    .concat();
    let actual = http(&c, VIP, &args);
    assert_eq!(actual.counts, [("v1".to_string(), 5)].into(), "{actual:?}");
    for h in [
        "access-control-allow-origin: https://app.example",
        "access-control-allow-credentials: true",
        "access-control-expose-headers: x-trace",
    ] {
        assert_eq!(count(&actual, h), 5, "{h}: {actual:?}");
    }
    assert_eq!(
        count(&actual, "access-control-max-age: 600"),
        0,
        "{actual:?}"
    );
    // Without Origin: not a CORS request.
    let plain = http(&c, VIP, &SHOWN);
    assert_eq!(
        (plain.count("v1"), plain.resp_headers.len()),
        (1, 0),
        "{plain:?}"
    );
}

#[test]
fn cors_unmatched_preflights_ignored_are_answered_without_grant() {
    skip_unless!(AGENT);
    let _serial = serial();
    let c = start(2);
    let ignore = CORS.replace(
        "      allowCredentials: true\n",
        "      allowCredentials: true\n      unmatchedPreflights: IGNORE\n",
    );
    let log = web(&c, &ignore, 200);
    let args = [
        &[
            "--count",
            "3",
            "--method",
            "OPTIONS",
            "--header",
            "origin: https://evil.example",
            "--header",
            "access-control-request-method: GET",
        ][..],
        &SHOWN[..],
    ]
    .concat();
    let r = http(&c, VIP, &args);
    assert_eq!(
        r.counts,
        [(String::new(), 3)].into(),
        "{r:?}\n{}",
        c.agent.log()
    );
    assert_eq!(
        count(&r, "access-control-allow-methods: GET,PUT"),
        3,
        "{r:?}"
    );
    assert_eq!(
        count(&r, "access-control-allow-origin: https://evil.example"),
        0
    );
    assert_eq!(hosts(&log).len(), 0, "the service saw a preflight");
}

#[test]
fn retries_backoff_spaces_the_attempts() {
    skip_unless!(AGENT);
    let _serial = serial();
    let c = start(2);
    // The service always fails: each request makes 3 attempts, waiting uniformly up to 100 ms
    // then up to 300 ms between them (base 100 ms), 2 s for ten requests on average. Envoy's
    // 25 ms default waits at most 100 ms per request: 1 s for ten.
    let routes = "  - route:\n    - destination:\n        host: web\n    retries:\n      attempts: 2\n      retryOn: 5xx\n      backoff: 100ms\n";
    let log = web(&c, routes, 503);
    let r = http(
        &c,
        VIP,
        &[
            "--count",
            "10",
            "--per-request",
            "1",
            "--timeout-ms",
            "5000",
        ],
    );
    assert_eq!(
        r.answers.values().sum::<u64>(),
        10,
        "{r:?}\n{}",
        c.agent.log()
    );
    assert_eq!(hosts(&log).len(), 30, "three attempts per request");
    let total_ms: u64 = r.requests.iter().map(|q| q.us).sum::<u64>() / 1000;
    // Below 1.1 s with probability about 1/1000 with the base (3 standard deviations);
    // unreachable without it.
    assert!(total_ms > 1100, "{total_ms} ms in all: {r:?}");
    assert!(total_ms < 4000 + 2000, "{total_ms} ms in all: {r:?}");
}

/// Pod 0 (the client) declared as a Pod of `namespace`, so the proxy knows its namespace.
fn client_in(c: &Cluster, namespace: &str) {
    let ip = c.node.pod(0).ip();
    c.write(
        "client.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  namespace: {namespace}\n  labels:\n    app: client\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n"),
    );
}

#[test]
fn export_to_limits_a_virtual_service_to_its_namespaces_clients() {
    skip_unless!(AGENT);
    let _serial = serial();
    let c = start(2);
    // Exported to its own namespace only: its clients get the abort, the others plain
    // forwarding to the service, as if there were no VirtualService.
    let routes = "  - fault:\n      abort:\n        httpStatus: 418\n        percentage: {value: 100}\n    route:\n    - destination:\n        host: web\n";
    client_in(&c, "default");
    let text = vs(routes).replace("spec:\n", "spec:\n  exportTo: [\".\"]\n");
    let log = c.node.work_dir().join("v1.requests");
    let args = ["serve", "--name", "v1", "--http", "8080", "--http-log"];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.push(log.display().to_string());
    c.node.spawn_ready(1, "v1", &args).expect("server");
    c.write(
        "web.yaml",
        &docs(&[app(&c, "web", VIP, &[(1, "v1")]), text]),
    );
    wait_steered(&c, SVC);
    let own = http(&c, VIP, &["--count", "5"]);
    assert_eq!(
        own.answers,
        [("418 fault filter abort".to_string(), 5)].into(),
        "{own:?}\n{}",
        c.agent.log()
    );
    assert_eq!(hosts(&log).len(), 0);

    // The client moves to another namespace: the VirtualService is not exported there.
    client_in(&c, "other");
    let moved = meshpath_tests::wait_until(std::time::Duration::from_secs(5), || {
        http(&c, VIP, &[]).count("v1") == 1
    });
    assert!(moved, "not applied:\n{}", c.agent.log());
    let other = http(&c, VIP, &["--count", "5"]);
    assert_eq!(other.counts, [("v1".to_string(), 5)].into(), "{other:?}");
}

#[test]
fn warmup_gives_a_joining_pod_a_small_share_first() {
    skip_unless!(AGENT);
    let _serial = serial();
    let c = start(3);
    // Round robin with a 100 s warmup: the rule alone steers web to the proxy.
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: web\n  namespace: default\nspec:\n  host: web\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n      warmup:\n        duration: 100s\n";
    serve(&c, 1, "v1", 0);
    serve(&c, 2, "v2", 0);
    c.write(
        "web.yaml",
        &docs(&[app(&c, "web", VIP, &[(1, "v1")]), dr.to_string()]),
    );
    wait_steered(&c, SVC);
    let alone = http(&c, VIP, &["--count", "20"]);
    assert_eq!(alone.count("v1"), 20, "{alone:?}\n{}", c.agent.log());

    // v2 joins the running service: younger than a tenth of the window, it weighs 0.1
    // against v1's 1, about 1 request in 11 (round robin without warmup: 1 in 2).
    c.write(
        "web.yaml",
        &docs(&[app(&c, "web", VIP, &[(1, "v1"), (2, "v2")]), dr.to_string()]),
    );
    let joined = meshpath_tests::wait_until(std::time::Duration::from_secs(5), || {
        http(&c, VIP, &["--count", "20"]).count("v2") > 0
    });
    assert!(joined, "v2 never answered:\n{}", c.agent.log());
    let r = http(&c, VIP, &["--count", "500"]);
    let (v1, v2) = (r.count("v1"), r.count("v2"));
    assert_eq!(v1 + v2, 500, "{r:?}");
    // Binomial(500, 1/11): 45 ± 6.4; ±5 sd, far from round robin's 250.
    assert!((13..=77).contains(&v2), "v2 answered {v2} of 500: {r:?}");
}
