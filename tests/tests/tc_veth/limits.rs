//! `sessionAffinity: ClientIP` and `connectionPool.tcp.maxConnections` on the pods' veths, for
//! the unmanaged sender in pod 0's namespace (only the veth program sees its connects): the
//! uplink's affinity table and connection record, the socket path's per-Service counter.
//! Endpoints are pods 1 and 2: a pod reaching itself through a ClusterIP is not served.

use std::process::Command;
use std::time::Duration;

use meshpath_tests::agent::{counter, svc, Agent};
use meshpath_tests::manifests::{docs, endpoint_slice, Ep};
use meshpath_tests::{addr, skip_unless, wait_until, ClientReport, Node, Target, AGENT};

use super::{node_with, start_with};

const STICKY_VIP: &str = "10.96.0.70";
const SPREAD_VIP: &str = "10.96.0.71";
const LIMITED_VIP: &str = "10.96.0.72";
const LIMITED: &str = "default/lim:";

fn service(name: &str, vip: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  \
         clusterIP: {vip}\n{extra}  ports:\n  - name: p\n    port: 80\n    targetPort: 8080\n    \
         protocol: TCP\n  selector:\n    app: {name}\n"
    )
}

/// Three pods, servers `web-p1` and `web-p2` on 8080 in pods 1 and 2, and the agent over
/// `yaml` with every veth attached.
fn setup(yaml: impl Fn(&Node) -> String, extra: &[&str]) -> Option<(Node, Agent)> {
    let node = node_with(3)?;
    node.spawn_server(2, "web-p2", &[8080], &[], &[])
        .expect("server in pod 2");
    let agent = start_with(&node, 3, yaml(&node), extra);
    Some((node, agent))
}

#[test]
fn client_ip_affinity_keeps_an_unmanaged_senders_connections_on_one_backend() {
    skip_unless!(AGENT);
    let Some((node, agent)) = setup(
        |node| {
            let eps = [Ep::ready(node.pod(1).ip()), Ep::ready(node.pod(2).ip())];
            docs(&[
                service("sticky", STICKY_VIP, "  sessionAffinity: ClientIP\n"),
                endpoint_slice("sticky", 8080, "TCP", &eps),
                service("spread", SPREAD_VIP, ""),
                endpoint_slice("spread", 8080, "TCP", &eps),
            ])
        },
        &[],
    ) else {
        return;
    };
    let r = node
        .tcp(Target::Outside, addr(STICKY_VIP, 80), 10)
        .expect("sticky");
    let s = agent.status().expect("status");
    assert!(
        r.count("web-p1") == 10 || r.count("web-p2") == 10,
        "{r:?}\n{s}"
    );
    assert_eq!(counter(&s, "tc_veth_new_flow"), 10, "{s}");
    assert_eq!(counter(&s, "tc_veth_affinity_hit"), 9, "{s}");
    assert_eq!(counter(&s, "tc_veth_affinity_update_failed"), 0, "{s}");

    // Control: the same endpoints without affinity are spread (all 20 on one: p = 2^-19).
    let r = node
        .tcp(Target::Outside, addr(SPREAD_VIP, 80), 20)
        .expect("spread");
    assert!(r.count("web-p1") > 0 && r.count("web-p2") > 0, "{r:?}");
    assert_eq!(r.count("web-p1") + r.count("web-p2"), 20, "{r:?}");
    let s = agent.status().expect("status");
    assert_eq!(counter(&s, "tc_veth_affinity_hit"), 9, "{s}");
}

/// A `maxConnections: 2` Service whose one endpoint is pod 1.
fn limited(node: &Node) -> String {
    let dr = "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  \
              name: lim\nspec:\n  host: lim\n  trafficPolicy:\n    connectionPool:\n      \
              tcp:\n        maxConnections: 2\n"
        .to_string();
    docs(&[
        service("lim", LIMITED_VIP, ""),
        endpoint_slice("lim", 8080, "TCP", &[Ep::ready(node.pod(1).ip())]),
        dr,
    ])
}

fn active(agent: &Agent) -> u64 {
    let s = agent.status().expect("status");
    svc(&s, LIMITED)["active_connections"].as_u64().unwrap_or(0)
}

fn wait_active(agent: &Agent, want: u64, timeout: Duration, what: &str) {
    if !wait_until(timeout, || active(agent) == want) {
        panic!(
            "{what}: active_connections stayed {} (want {want})\n{}",
            active(agent),
            agent.status().map(|s| s.to_string()).unwrap_or_default()
        );
    }
}

/// One connect from the unmanaged sender: `(ok, refused)`.
fn connect_once(node: &Node) -> (u64, u64) {
    let v = node
        .run_client(
            Target::Outside,
            &[
                "tcp",
                "--addr",
                &addr(LIMITED_VIP, 80).to_string(),
                "--count",
                "1",
                "--timeout-ms",
                "2000",
            ],
        )
        .expect("client");
    let r: ClientReport = serde_json::from_value(v).expect("report");
    let refused = r.errors.get("ECONNREFUSED").copied().unwrap_or(0)
        + r.errors.get("ECONNRESET").copied().unwrap_or(0);
    (r.ok() as u64, refused as u64)
}

/// Waits until the veth programs saw no packet for half a second (a delayed ACK of the last
/// echo would re-create an entry the test is about to delete).
fn wait_quiet(agent: &Agent) {
    let seen = || {
        let s = agent.status().expect("status");
        counter(&s, "tc_veth_flow_translated") + counter(&s, "tc_veth_reply_reversed")
    };
    let mut last = seen();
    let quiet = wait_until(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(500));
        let now = seen();
        std::mem::replace(&mut last, now) == now
    });
    assert!(quiet, "the veth flows never went quiet");
}

/// Deletes the veth flows' conntrack entries (both directions), as an LRU eviction would:
/// no FIN or RST of them is ever seen again by the programs.
fn evict_veth_flows(node: &Node) -> usize {
    let pin = node.pin_dir().join("MP_TC_CT");
    let pin = pin.to_str().expect("pin path");
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", pin])
        .output()
        .expect("bpftool map dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dump json");
    let mut removed = 0;
    for e in entries.as_array().expect("entries") {
        let key: Vec<String> = e["key"]
            .as_array()
            .expect("raw key")
            .iter()
            .map(|b| {
                b.as_str()
                    .expect("hex byte")
                    .trim_start_matches("0x")
                    .to_owned()
            })
            .collect();
        // `CtKey::dir` (byte 13): 2 and 3 are the veth path's.
        if !matches!(key[13].as_str(), "02" | "03") {
            continue;
        }
        let mut args = vec!["map", "delete", "pinned", pin, "key", "hex"];
        args.extend(key.iter().map(String::as_str));
        let ok = Command::new("bpftool")
            .args(&args)
            .status()
            .expect("bpftool map delete")
            .success();
        assert!(ok, "bpftool map delete {key:?}");
        removed += 1;
    }
    removed
}

#[test]
fn max_connections_refuses_an_unmanaged_senders_third_connection_and_gives_slots_back() {
    skip_unless!(AGENT);
    let Some((node, agent)) = setup(limited, &[]) else {
        return;
    };
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .status()
            .is_ok_and(|s| svc(&s, LIMITED)["max_connections"] == 2)),
        "the limit never reached the maps"
    );
    let target = addr(LIMITED_VIP, 80);

    // Two held connections fill the limit.
    let a = node
        .hold(Target::Outside, target)
        .expect("first connection");
    let mut b = node
        .hold(Target::Outside, target)
        .expect("second connection");
    assert_eq!(b.echo("b").expect("echo"), "b");
    assert_eq!(active(&agent), 2);

    // The third is refused at its SYN with a RST into the pod.
    assert_eq!(connect_once(&node), (0, 1));
    let s = agent.status().expect("status");
    assert_eq!(counter(&s, "tc_veth_conn_limit_refused"), 1, "{s}");
    assert_eq!(counter(&s, "tc_veth_reset_sent"), 1, "{s}");
    assert_eq!(active(&agent), 2);

    // Closing one gives its slot back at its FIN; a new connection gets in.
    a.close().expect("closing the first");
    wait_active(&agent, 1, Duration::from_secs(5), "after a close");
    let mut c = node.hold(Target::Outside, target).expect("after the close");
    assert_eq!(c.echo("c").expect("echo"), "c");
    assert_eq!(active(&agent), 2);
    b.close().expect("closing the second");
    c.close().expect("closing the third");
    wait_active(&agent, 0, Duration::from_secs(5), "after every close");
    let s = agent.status().expect("status");
    assert_eq!(counter(&s, "tc_veth_conn_released"), 3, "{s}");

    // A flow whose conntrack entries vanish (evicted) while it goes on: its next segment is
    // tracked again under the slot its record still holds (no second one), and its close
    // gives that back.
    let mut e = node
        .hold(Target::Outside, target)
        .expect("a flow to evict and resume");
    assert_eq!(e.echo("e").expect("echo"), "e");
    wait_quiet(&agent);
    assert!(evict_veth_flows(&node) >= 2, "no veth conntrack entries");
    assert_eq!(e.echo("e2").expect("echo after the eviction"), "e2");
    assert_eq!(active(&agent), 1);
    e.close().expect("closing the resumed flow");
    wait_active(
        &agent,
        0,
        Duration::from_secs(5),
        "after the resumed flow closed",
    );
    let s = agent.status().expect("status");
    assert_eq!(counter(&s, "tc_veth_conn_released"), 4, "{s}");

    // A flow whose conntrack entries vanish with no packet after: the agent's sweep gives its
    // slot back (within its 10 s period), through the uplink's release program.
    let mut d = node.hold(Target::Outside, target).expect("a flow to evict");
    assert_eq!(d.echo("d").expect("echo"), "d");
    assert_eq!(active(&agent), 1);
    wait_quiet(&agent);
    assert!(evict_veth_flows(&node) >= 2, "no veth conntrack entries");
    wait_active(&agent, 0, Duration::from_secs(25), "after the eviction");
    let s = agent.status().expect("status");
    assert_eq!(counter(&s, "tc_conn_released_swept"), 1, "{s}");
    assert_eq!(counter(&s, "tc_veth_conn_released"), 4, "{s}");
    drop(d);
    for failure in [
        "tc_conn_limit_untracked",
        "tc_veth_ct_update_failed",
        "tc_veth_refusal_failed",
    ] {
        assert_eq!(counter(&s, failure), 0, "{failure}: {s}");
    }
}

#[test]
fn connection_limits_false_leaves_the_veth_flows_uncounted() {
    skip_unless!(AGENT);
    let Some((node, agent)) = setup(limited, &["--connection-limits", "false"]) else {
        return;
    };
    let target = addr(LIMITED_VIP, 80);
    let mut held = Vec::new();
    for i in 0..3 {
        let mut h = node.hold(Target::Outside, target).expect("held connection");
        assert_eq!(h.echo(&format!("{i}")).expect("echo"), format!("{i}"));
        held.push(h);
    }
    let s = agent.status().expect("status");
    assert_eq!(active(&agent), 0, "{s}");
    assert_eq!(counter(&s, "tc_veth_conn_limit_refused"), 0, "{s}");
    assert!(counter(&s, "tc_veth_new_flow") >= 3, "{s}");
}
