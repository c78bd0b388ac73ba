//! `connectionPool.tcp.maxConnections` in the kernel for a service on the pure kernel path:
//! connects over the limit are refused at once, and the count never drifts (10 000 open/close
//! cycles, resets, processes killed with their sockets open).

use std::time::Duration;

use meshpath_tests::agent::{counter, svc};
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{addr, skip_unless, wait_until, ClientReport, Cluster, Hold, AGENT};

/// A refused connect returns from the program itself, not after an unanswered SYN (the first
/// retransmission alone waits 1 s); the bound leaves room for a loaded 2-core machine.
const REFUSED_AT_ONCE_US: u64 = 200_000;

fn dr(host: &str, max: u32) -> String {
    format!("apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  name: {host}\nspec:\n  host: {host}\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        maxConnections: {max}\n")
}

/// Three pods, the agent with `agent_args`, and servers answering `names` on 8080 in pods 1
/// and 2, plus an xfer server on 9000 in pod 1.
fn with_servers(agent_args: &[&str], names: [&str; 2]) -> Cluster {
    let c = Cluster::start(3, &[], agent_args);
    for (i, name) in [1, 2].into_iter().zip(names) {
        c.node
            .spawn_server(i, name, &[8080], &[], &[])
            .expect("server");
    }
    c.node.spawn_xfer_server(1, 9000).expect("xfer server");
    c
}

/// web (10.96.0.40:80 → pod 1:8080, limit 2), cycle (10.96.0.41:80 → pod 2:8080, limit 50),
/// resets (10.96.0.42:9000 → pod 1's xfer server, limit 50).
fn start() -> Cluster {
    let c = with_servers(&[], ["web", "cycle"]);
    let (p1, p2) = (Ep::ready(c.node.pod(1).ip()), Ep::ready(c.node.pod(2).ip()));
    c.write(
        "limits.yaml",
        &docs(&[
            service("web", "10.96.0.40", 80, "8080", "TCP", ""),
            endpoint_slice("web", 8080, "TCP", std::slice::from_ref(&p1)),
            dr("web", 2),
            service("cycle", "10.96.0.41", 80, "8080", "TCP", ""),
            endpoint_slice("cycle", 8080, "TCP", &[p2]),
            dr("cycle", 50),
            service("resets", "10.96.0.42", 9000, "9000", "TCP", ""),
            endpoint_slice("resets", 9000, "TCP", &[p1]),
            dr("resets", 50),
        ]),
    );
    c.wait_status("limits programmed", Duration::from_secs(5), |s| {
        ["default/web:", "default/cycle:", "default/resets:"]
            .iter()
            .all(|n| {
                meshpath_tests::agent::service(s, n).is_some_and(|x| x["max_connections"].is_u64())
            })
    });
    c
}

fn active(c: &Cluster, name: &str) -> u64 {
    svc(&c.status(), name)["active_connections"]
        .as_u64()
        .expect("active")
}

fn wait_active(c: &Cluster, name: &str, want: u64) {
    let reached = wait_until(Duration::from_secs(5), || active(c, name) == want);
    assert!(
        reached,
        "{name}: active {} never reached {want}",
        active(c, name)
    );
}

/// 10 000 sequential open/close cycles to `vip:80`: each is answered or refused, and closed
/// connections free their slots (nearly all are answered).
fn cycles(c: &Cluster, vip: &str) -> ClientReport {
    let r = c.node.tcp(0, addr(vip, 80), 10_000).expect("tcp");
    let refused = r.errors.get("ECONNREFUSED").copied().unwrap_or(0);
    assert_eq!(r.ok() + refused, 10_000, "{r:?}");
    assert!(
        r.ok() >= 9_000,
        "closed connections must free their slots: {r:?}"
    );
    r
}

/// 40 connections to `target` that the server resets.
fn resets(c: &Cluster, target: &str) {
    let args = [
        "xfer", "--addr", target, "--mode", "rst", "--conns", "40", "--bytes", "1024",
    ];
    let x = c.node.run_client(0, &args).expect("xfer");
    assert_eq!(x["ok"], 40, "{x:#}");
}

/// Kills the processes holding connections while those are open (the kernel closes them).
fn kill_all(holds: Vec<Hold>) {
    for h in &holds {
        // SAFETY: kill(2) on a child process the harness started and still owns.
        unsafe { libc::kill(h.pid() as i32, libc::SIGKILL) };
    }
}

#[test]
fn connects_over_the_limit_are_refused_at_once_and_slots_come_back() {
    skip_unless!(AGENT);
    let c = start();
    let mut a = c.node.hold(0, addr("10.96.0.40", 80)).expect("first");
    let _b = c.node.hold(0, addr("10.96.0.40", 80)).expect("second");
    wait_active(&c, "default/web:", 2);
    let r = c.node.tcp(0, addr("10.96.0.40", 80), 5).expect("tcp");
    assert_eq!(r.errors.get("ECONNREFUSED"), Some(&5), "{r:?}");
    assert!(
        r.max_connect_us.expect("durations") < REFUSED_AT_ONCE_US,
        "{r:?}"
    );
    let s = c.status();
    assert_eq!(svc(&s, "default/web:")["conn_limit_refused"], 5);
    assert_eq!(counter(&s, "conn_limit_refused"), 5);

    // The established connections keep working, and closing one frees its slot.
    assert_eq!(a.echo("still here").expect("echo"), "still here");
    a.close().expect("close");
    wait_active(&c, "default/web:", 1);
    assert_eq!(
        c.node.tcp(0, addr("10.96.0.40", 80), 1).expect("tcp").ok(),
        1
    );
}

#[test]
fn the_count_returns_to_zero_after_10000_cycles_resets_and_killed_processes() {
    skip_unless!(AGENT);
    let c = start();
    // 10 000 sequential open/close cycles.
    cycles(&c, "10.96.0.41");
    // 40 connections the server resets.
    resets(&c, "10.96.0.42:9000");
    // Processes killed while their connections are open.
    let holds: Vec<_> = (0..10)
        .map(|_| c.node.hold(0, addr("10.96.0.41", 80)).expect("hold"))
        .collect();
    wait_active(&c, "default/cycle:", 10);
    kill_all(holds);
    wait_active(&c, "default/cycle:", 0);
    wait_active(&c, "default/resets:", 0);
    let s = c.status();
    assert!(counter(&s, "conn_released") >= 10_040, "{s:#}");
    assert_eq!(counter(&s, "conn_track_full"), 0);
}

#[test]
fn limits_follow_the_destination_rule_file_live() {
    skip_unless!(AGENT);
    let c = start();
    let _a = c.node.hold(0, addr("10.96.0.40", 80)).expect("first");
    let _b = c.node.hold(0, addr("10.96.0.40", 80)).expect("second");
    wait_active(&c, "default/web:", 2);
    assert_eq!(
        c.node.tcp(0, addr("10.96.0.40", 80), 1).expect("tcp").ok(),
        0
    );
    let text = std::fs::read_to_string(c.manifests.join("limits.yaml")).expect("read");
    c.write(
        "limits.yaml",
        &text.replacen("maxConnections: 2", "maxConnections: 3", 1),
    );
    c.wait_status("limit raised", Duration::from_secs(5), |s| {
        svc(s, "default/web:")["max_connections"] == 3
    });
    assert_eq!(
        c.node.tcp(0, addr("10.96.0.40", 80), 1).expect("tcp").ok(),
        1
    );
}

// Per route destination: a VirtualService `tcp:` route over subsets. Each destination is its own
// Envoy cluster with its own breaker (the subset's merged maxConnections), so a connect counts
// against the subset its slot belongs to, not against the service.

/// A Pod manifest giving `ip` the labels the subsets select on.
fn pod(name: &str, version: &str, ip: std::net::Ipv4Addr) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: sub\n    version: {version}\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n")
}

fn subset_dr(host: &str, v1: u32, v2: u32) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {host}\nspec:\n  host: {host}\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n    trafficPolicy:\n      connectionPool:\n        tcp:\n          maxConnections: {v1}\n  - name: v2\n    labels:\n      version: v2\n    trafficPolicy:\n      connectionPool:\n        tcp:\n          maxConnections: {v2}\n")
}

fn split_vs(host: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {host}\nspec:\n  hosts:\n  - {host}\n  tcp:\n  - route:\n    - destination:\n        host: {host}\n        subset: v1\n      weight: 50\n    - destination:\n        host: {host}\n        subset: v2\n      weight: 50\n")
}

/// sub (10.96.0.43:80 → pod 1 "v1" / pod 2 "v2" on 8080, 50/50) and subx (10.96.0.44:9000 →
/// both pods' xfer servers, 50/50), with per-subset limits `v1`/`v2` on both.
fn start_subsets(v1: u32, v2: u32, agent_args: &[&str]) -> Cluster {
    let c = with_servers(agent_args, ["v1", "v2"]);
    c.node.spawn_xfer_server(2, 9000).expect("xfer server");
    let (ip1, ip2) = (c.node.pod(1).ip(), c.node.pod(2).ip());
    let eps = [Ep::ready(ip1), Ep::ready(ip2)];
    c.write(
        "subsets.yaml",
        &docs(&[
            pod("sub-v1", "v1", ip1),
            pod("sub-v2", "v2", ip2),
            service("sub", "10.96.0.43", 80, "8080", "TCP", ""),
            endpoint_slice("sub", 8080, "TCP", &eps),
            subset_dr("sub", v1, v2),
            split_vs("sub"),
            service("subx", "10.96.0.44", 9000, "9000", "TCP", ""),
            endpoint_slice("subx", 9000, "TCP", &eps),
            subset_dr("subx", v1, v2),
            split_vs("subx"),
        ]),
    );
    c
}

const V1: &str = "outbound|80|v1|sub.default.svc.cluster.local";
const V2: &str = "outbound|80|v2|sub.default.svc.cluster.local";

fn group(s: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    s["limit_groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == name)
        .cloned()
}

fn group_field(c: &Cluster, name: &str, field: &str) -> u64 {
    let s = c.status();
    group(&s, name).unwrap_or_else(|| panic!("group {name} not in status: {s:#}"))[field]
        .as_u64()
        .expect("number")
}

fn wait_group_active(c: &Cluster, name: &str, want: u64) {
    let active = || group_field(c, name, "active_connections");
    let reached = wait_until(Duration::from_secs(5), || active() == want);
    assert!(reached, "{name}: active {} never reached {want}", active());
}

/// [`start_subsets`] with limits on, once the agent has programmed them.
fn start_limited(v1: u32, v2: u32) -> Cluster {
    let c = start_subsets(v1, v2, &[]);
    wait_groups(&c, v1.into(), v2.into());
    c
}

fn wait_groups(c: &Cluster, v1: u64, v2: u64) {
    c.wait_status("subset limits programmed", Duration::from_secs(5), |s| {
        group(s, V1).is_some_and(|g| g["max_connections"] == v1)
            && group(s, V2).is_some_and(|g| g["max_connections"] == v2)
    });
}

/// Opens holds to sub until `want` of them landed on the server `on` (holds landing elsewhere
/// are closed at once); returns those and how many attempts were refused.
fn hold_until<'n>(c: &'n Cluster, on: &str, want: usize) -> (Vec<meshpath_tests::Hold<'n>>, u64) {
    let (mut holds, mut refused) = (Vec::new(), 0);
    for _ in 0..100 {
        if holds.len() == want {
            return (holds, refused);
        }
        match c.node.hold(0, addr("10.96.0.43", 80)) {
            Ok(h) if h.name() == on => holds.push(h),
            Ok(other) => drop(other),
            Err(e) if format!("{e:#}").to_lowercase().contains("refused") => refused += 1,
            Err(e) => panic!("hold: {e:#}"),
        }
    }
    panic!("{want} holds on {on} not reached in 100 attempts");
}

#[test]
fn each_subset_refuses_over_its_own_limit_while_the_other_accepts() {
    skip_unless!(AGENT);
    let c = start_limited(2, 5);
    let (v1_holds, none) = hold_until(&c, "v1", 2);
    assert_eq!(none, 0);
    wait_group_active(&c, V1, 2);
    wait_group_active(&c, V2, 0);

    // v1 is full: its slots refuse at once; v2's slots still accept.
    let r = c.node.tcp(0, addr("10.96.0.43", 80), 200).expect("tcp");
    let mut refused = r.errors.get("ECONNREFUSED").copied().unwrap_or(0);
    assert_eq!(r.counts.get("v1"), None, "{r:?}");
    assert_eq!(
        r.counts.get("v2").copied().unwrap_or(0) + refused,
        200,
        "{r:?}"
    );
    assert!(
        refused > 50 && refused < 150,
        "about half land on v1: {r:?}"
    );
    assert!(
        r.max_connect_us.expect("durations") < REFUSED_AT_ONCE_US,
        "{r:?}"
    );
    let s = c.status();
    assert_eq!(group(&s, V1).expect("v1")["refused"], refused);
    assert_eq!(group(&s, V2).expect("v2")["refused"], 0);
    assert_eq!(counter(&s, "conn_limit_subset_refused"), refused);
    assert_eq!(counter(&s, "conn_limit_refused"), 0);
    // The frontend itself counts nothing: its connects count per destination.
    assert_eq!(svc(&s, "default/sub:")["route_limits"], true);
    assert_eq!(svc(&s, "default/sub:")["active_connections"], 0);

    // Fill v2 too (attempts landing on v1 are refused): now every connect is refused.
    let (v2_holds, on_v1) = hold_until(&c, "v2", 5);
    refused += on_v1;
    wait_group_active(&c, V2, 5);
    let r = c.node.tcp(0, addr("10.96.0.43", 80), 40).expect("tcp");
    assert_eq!(r.errors.get("ECONNREFUSED"), Some(&40), "{r:?}");
    let s = c.status();
    let (g1, g2) = (group(&s, V1).expect("v1"), group(&s, V2).expect("v2"));
    assert_eq!(
        g1["refused"].as_u64().expect("n") + g2["refused"].as_u64().expect("n"),
        refused + 40
    );
    assert_eq!(counter(&s, "conn_limit_subset_refused"), refused + 40);
    drop(v2_holds);
    drop(v1_holds);
    wait_group_active(&c, V1, 0);
    wait_group_active(&c, V2, 0);
}

#[test]
fn subset_counts_return_to_zero_after_10000_cycles_resets_and_killed_processes() {
    skip_unless!(AGENT);
    let c = start_limited(50, 50);
    let r = cycles(&c, "10.96.0.43");
    let refused = r.errors.get("ECONNREFUSED").copied().unwrap_or(0);
    assert!(r.counts.get("v1").is_some_and(|n| *n > 3_000), "{r:?}");
    assert!(r.counts.get("v2").is_some_and(|n| *n > 3_000), "{r:?}");
    resets(&c, "10.96.0.44:9000");
    let holds: Vec<_> = (0..10)
        .map(|_| c.node.hold(0, addr("10.96.0.43", 80)).expect("hold"))
        .collect();
    let on_v1 = holds.iter().filter(|h| h.name() == "v1").count() as u64;
    wait_group_active(&c, V1, on_v1);
    wait_group_active(&c, V2, 10 - on_v1);
    kill_all(holds);
    let s = c.status();
    for g in s["limit_groups"].as_array().expect("groups") {
        let name = g["name"].as_str().expect("name");
        wait_group_active(&c, name, 0);
    }
    assert_eq!(s["limit_groups"].as_array().map(Vec::len), Some(4), "{s:#}");
    let s = c.status();
    assert!(counter(&s, "conn_released") >= 10_050 - refused, "{s:#}");
    assert_eq!(counter(&s, "conn_track_full"), 0);
    assert_eq!(counter(&s, "conn_limit_id_invalid"), 0);
}

#[test]
fn subset_limits_follow_the_destination_rule_file_live() {
    skip_unless!(AGENT);
    let c = start_limited(2, 5);
    let (_holds, _) = hold_until(&c, "v1", 2);
    wait_group_active(&c, V1, 2);
    let r = c.node.tcp(0, addr("10.96.0.43", 80), 20).expect("tcp");
    assert_eq!(r.counts.get("v1"), None, "{r:?}");
    let text = std::fs::read_to_string(c.manifests.join("subsets.yaml")).expect("read");
    c.write(
        "subsets.yaml",
        &text.replacen("maxConnections: 2", "maxConnections: 3", 1),
    );
    wait_groups(&c, 3, 5);
    let r = c.node.tcp(0, addr("10.96.0.43", 80), 20).expect("tcp");
    // v1 has room for one more again. A closed connection frees its slot when its socket
    // reaches TCP_CLOSE, just after close() returns, so a connect right behind it may still be
    // refused: only the accepted ones are counted here.
    assert!(r.counts.get("v1").is_some_and(|n| *n > 0), "{r:?}");
}

#[test]
fn connection_limits_false_counts_nothing_service_wide_or_per_subset() {
    skip_unless!(AGENT);
    let c = start_subsets(1, 1, &["--connection-limits=false"]);
    c.write("web.yaml", &{
        let p1 = Ep::ready(c.node.pod(1).ip());
        docs(&[
            service("web", "10.96.0.40", 80, "8080", "TCP", ""),
            endpoint_slice("web", 8080, "TCP", &[p1]),
            dr("web", 1),
        ])
    });
    c.wait_status("services programmed", Duration::from_secs(5), |s| {
        meshpath_tests::agent::service(s, "default/web:").is_some()
            && meshpath_tests::agent::service(s, "default/sub:")
                .is_some_and(|x| x["backends"].as_array().is_some_and(|b| b.len() == 100))
    });
    let (_sub, refused) = hold_until(&c, "v1", 3);
    assert_eq!(refused, 0);
    let _web: Vec<_> = (0..3)
        .map(|_| c.node.hold(0, addr("10.96.0.40", 80)).expect("web hold"))
        .collect();
    let s = c.status();
    assert_eq!(s["limit_groups"].as_array().map(Vec::len), Some(0), "{s:#}");
    assert!(
        svc(&s, "default/web:")["max_connections"].is_null(),
        "{s:#}"
    );
    assert_eq!(svc(&s, "default/sub:")["route_limits"], false);
    assert_eq!(counter(&s, "conn_limit_refused"), 0);
    assert_eq!(counter(&s, "conn_limit_subset_refused"), 0);
}
