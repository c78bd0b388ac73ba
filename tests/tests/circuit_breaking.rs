//! The seed's circuit-breaking proof of concept (`golang-app-gateway-dr`) against the real
//! kernel, agent and node proxy: `fortio load -c 3 -qps 0 -n 30` through a DestinationRule with
//! `maxConnections: 1` and `http1MaxPendingRequests: 1` gets both 200s and 503s, and the
//! proxy's `upstream_rq_pending_overflow` (read with `meshpath stats` from the admin listener)
//! counts exactly the 503s, as Istio's walkthrough reads it from Envoy.

mod seed;

use std::collections::BTreeMap;

use meshpath_tests::agent::meshpath;
use meshpath_tests::Cluster;
use meshpath_tests::{skip_unless, AGENT};
use seed::{app, serve, wait_steered};

/// ClusterIP of golang-app-gateway-svc.
const GW: &str = "10.96.0.42";

/// The seed's DestinationRule, verbatim except for its first `interval` key: YAML allows a key
/// once (Istio rejects the duplicate), and the second is the one its comment describes.
const GW_DR: &str = r#"apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: golang-app-gateway-dr
spec:
  host: golang-app-gateway-svc
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1                        # 将连接池大小设为1
      http:
        http1MaxPendingRequests: 1               # 将http连接池大小设为1
        maxRequestsPerConnection: 1              # 与gateway的 request/PerConnection 不超过1个
    outlierDetection:
      consecutive5xxErrors: 1                    # 任何连续 1 次失败并出现 502、503 或 504 错误代码的主机
      interval: 1s                               # 上游主机配置为每 1 秒扫描一次
      baseEjectionTime: 3m                       # 最短拒绝时间默认为 30 秒。
      maxEjectionPercent: 100                    # 上游服务的负载平衡池中可以拒绝的主机的最大百分比。默认为 10%。

      # minHealthPercent                         只要关联的负载平衡池在健康模式下至少具有最小健康百分比的主机，就会启用异常值检测。
                                                   #默认值为 0%，因为它通常不适用于每个服务的 pod 很少的 k8s 环境。
"#;

const OVERFLOW_STAT: &str = "cluster.outbound|8080||golang-app-gateway-svc.default.svc.cluster.local.upstream_rq_pending_overflow";

/// `fortio load` from pod 0; returns its status-code counts.
fn fortio(c: &Cluster, args: &[&str], url: &str) -> BTreeMap<String, u64> {
    let mut cmd = c
        .node
        .pod(0)
        .command("/usr/local/bin/fortio")
        .expect("fortio");
    cmd.arg("load").args(args).args(["-json", "-", url]);
    let out = cmd.output().expect("running fortio");
    assert!(
        out.status.success(),
        "fortio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // fortio's own report (shown with --nocapture; the README quotes one).
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fortio JSON");
    report["RetCodes"]
        .as_object()
        .expect("RetCodes")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("count")))
        .collect()
}

/// `meshpath stats FILTER --admin-addr ADDR`: the lines printed.
fn stats(admin: &str, filter: &str) -> String {
    meshpath(["stats", filter, "--admin-addr", admin]).expect("meshpath stats")
}

/// The value of the stat `name`.
fn stat(admin: &str, name: &str) -> u64 {
    let text = stats(admin, name);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value")
}

#[test]
fn seed_destination_rule_trips_the_breaker_and_counts_every_overflow() {
    skip_unless!(AGENT);
    let c = Cluster::with_proxy(2, |_| vec![]);
    // Each test's agent has its own admin listener (the harness picks a free port).
    let admin = c.agent.admin_addr().expect("admin address").to_owned();
    // Slow enough that three concurrent clients always find the one connection busy.
    serve(&c, 1, "gateway", 100);
    c.write(
        "gw.yaml",
        &app(&c, "golang-app-gateway-svc", GW, &[(1, "v1")]),
    );
    c.write("dr.yaml", GW_DR);
    wait_steered(&c, "default/golang-app-gateway-svc:");

    let codes = fortio(
        &c,
        &["-c", "3", "-qps", "0", "-n", "30", "-loglevel", "Warning"],
        &format!("http://{GW}:8080"),
    );
    let ok = codes.get("200").copied().unwrap_or(0);
    let overflow = codes.get("503").copied().unwrap_or(0);
    assert_eq!(ok + overflow, 30, "{codes:?}\n{}", c.agent.log());
    assert!(ok > 0 && overflow > 0, "{codes:?}\n{}", c.agent.log());
    assert_eq!(stat(&admin, OVERFLOW_STAT), overflow, "{codes:?}");
    eprintln!("fortio: {codes:?}");
    let pending: Vec<String> = stats(&admin, "golang-app-gateway")
        .lines()
        .filter(|l| l.contains("pending"))
        .map(str::to_owned)
        .collect();
    eprintln!(
        "$ meshpath stats golang-app-gateway | grep pending\n{}",
        pending.join("\n")
    );
    assert_seed_pending_lines(&pending, overflow);
    // The kernel's counters ride along under `meshpath.`.
    let kernel = stats(&admin, "meshpath.service.");
    assert!(kernel.contains(".conn_limit_refused: "), "{kernel}");
    eprintln!("{kernel}");
}

/// The seed's `pilot-agent request GET stats | grep golang-app-gateway | grep pending`: the same
/// seven lines, in the same order, with values that fit the run (`overflow` 503s of 30 calls,
/// nothing pending any more, no connection failed).
fn assert_seed_pending_lines(lines: &[String], overflow: u64) {
    let prefix = "cluster.outbound|8080||golang-app-gateway-svc.default.svc.cluster.local.";
    let names = [
        "circuit_breakers.default.remaining_pending",
        "circuit_breakers.default.rq_pending_open",
        "circuit_breakers.high.rq_pending_open",
        "upstream_rq_pending_active",
        "upstream_rq_pending_failure_eject",
        "upstream_rq_pending_overflow",
        "upstream_rq_pending_total",
    ];
    let got: Vec<(&str, u64)> = lines
        .iter()
        .map(|l| {
            let (name, value) = l.rsplit_once(": ").unwrap_or_else(|| panic!("{l}"));
            let name = name.strip_prefix(prefix).unwrap_or_else(|| panic!("{l}"));
            (name, value.parse().unwrap_or_else(|_| panic!("{l}")))
        })
        .collect();
    assert_eq!(
        got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        names,
        "{lines:#?}"
    );
    let v = |n: &str| got.iter().find(|(name, _)| *name == n).map(|(_, v)| *v);
    // http1MaxPendingRequests: 1, none pending now.
    assert_eq!(v(names[0]), Some(1), "{lines:#?}");
    assert_eq!(v(names[1]), Some(0));
    assert_eq!(v(names[2]), Some(0));
    assert_eq!(v(names[3]), Some(0));
    assert_eq!(v(names[4]), Some(0), "no connection failed");
    assert_eq!(v(names[5]), Some(overflow));
    assert!(overflow > 0);
    // Every call either found the connection free, waited as pending, or overflowed.
    let total = v(names[6]).expect("total");
    assert!(total >= 1 && total + overflow <= 30, "{lines:#?}");
}
