//! `connectionPool.tcp.maxConnections` in the kernel for a service on the pure kernel path:
//! connects over the limit are refused at once, and the count never drifts (10 000 open/close
//! cycles, resets, processes killed with their sockets open).

mod common;

use std::time::{Duration, Instant};

use common::{addr, counter, svc, Cluster};
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};

fn dr(host: &str, max: u32) -> String {
    format!("apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  name: {host}\nspec:\n  host: {host}\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        maxConnections: {max}\n")
}

/// web (10.96.0.40:80 → pod 1:8080, limit 2), cycle (10.96.0.41:80 → pod 2:8080, limit 50),
/// resets (10.96.0.42:9000 → pod 1's xfer server, limit 50).
fn start() -> Cluster {
    let c = Cluster::start(3, &[], &[]);
    c.node
        .spawn_server(1, "web", &[8080], &[], &[])
        .expect("server");
    c.node
        .spawn_server(2, "cycle", &[8080], &[], &[])
        .expect("server");
    c.node.spawn_xfer_server(1, 9000).expect("xfer server");
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
    let start = Instant::now();
    while active(c, name) != want {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{name}: active {} never reached {want}",
            active(c, name)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn connects_over_the_limit_are_refused_at_once_and_slots_come_back() {
    let c = start();
    let mut a = c.node.hold(0, addr("10.96.0.40", 80)).expect("first");
    let _b = c.node.hold(0, addr("10.96.0.40", 80)).expect("second");
    wait_active(&c, "default/web:", 2);
    let r = c.node.tcp(0, addr("10.96.0.40", 80), 5).expect("tcp");
    assert_eq!(r.errors.get("ECONNREFUSED"), Some(&5), "{r:?}");
    assert!(r.max_connect_us.expect("durations") < 10_000, "{r:?}");
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
    let c = start();
    // 10 000 sequential open/close cycles.
    let r = c.node.tcp(0, addr("10.96.0.41", 80), 10_000).expect("tcp");
    assert_eq!(
        r.ok() + r.errors.get("ECONNREFUSED").copied().unwrap_or(0),
        10_000,
        "{r:?}"
    );
    assert!(
        r.ok() >= 9_000,
        "closed connections must free their slots: {r:?}"
    );
    // 40 connections the server resets.
    let x = c
        .node
        .run_client(
            0,
            &[
                "xfer",
                "--addr",
                "10.96.0.42:9000",
                "--mode",
                "rst",
                "--conns",
                "40",
                "--bytes",
                "1024",
            ],
        )
        .expect("xfer");
    assert_eq!(x["ok"], 40, "{x:#}");
    // Processes killed while their connections are open.
    let holds: Vec<_> = (0..10)
        .map(|_| c.node.hold(0, addr("10.96.0.41", 80)).expect("hold"))
        .collect();
    wait_active(&c, "default/cycle:", 10);
    for h in &holds {
        // SAFETY: kill(2) on a child process the harness started and still owns.
        unsafe { libc::kill(h.pid() as i32, libc::SIGKILL) };
    }
    drop(holds);
    wait_active(&c, "default/cycle:", 0);
    wait_active(&c, "default/resets:", 0);
    let s = c.status();
    assert!(counter(&s, "conn_released") >= 10_040, "{s:#}");
    assert_eq!(counter(&s, "conn_track_full"), 0);
}

#[test]
fn limits_follow_the_destination_rule_file_live() {
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
