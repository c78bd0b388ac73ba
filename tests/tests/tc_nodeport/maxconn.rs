//! `connectionPool.tcp.maxConnections` on the uplink: NodePort flows from the outside client
//! take slots of the Service's kernel connection counter (the one connect4 counts sockets
//! against). Two held connections fill a limit of 2, a third is refused with a RST, a close
//! by either end gives its slot back, a flow whose conntrack entry the agent removed is released by the
//! sweep, and after everything closed the count is 0 again. With `--connection-limits false`
//! nothing is counted.

use std::io::Write;
use std::net::Ipv4Addr;
use std::time::Duration;

use meshpath_tests::agent::{counter, svc, Agent};
use meshpath_tests::manifests::{docs, write};
use meshpath_tests::{
    addr, skip_line, skip_unless, wait_until, ClientReport, Node, Proxy, Source, AGENT,
};

use super::remote::{node_port_service, tc_counters};
use super::{tcx_supported, Outside, CLIENT_IP, NODE1_IP};

const LIMITED_PORT: u16 = 30100;
const SVC: &str = "default/lim:";

fn manifest(endpoints: &[(Ipv4Addr, &str)]) -> String {
    let dr = "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  \
              name: lim\nspec:\n  host: lim\n  trafficPolicy:\n    connectionPool:\n      \
              tcp:\n        maxConnections: 2\n"
        .to_string();
    docs(&[
        node_port_service(
            "lim",
            "10.96.0.30",
            "Cluster",
            &[("TCP", "echo", LIMITED_PORT, 9090)],
            endpoints,
        ),
        dr,
    ])
}

fn active(agent: &Agent) -> u64 {
    let s = agent.status().expect("status");
    svc(&s, SVC)["active_connections"].as_u64().unwrap_or(0)
}

/// Waits until the Service's count is `want`, else fails with what the agent shows.
fn wait_active(agent: &Agent, want: u64, timeout: Duration, what: &str) {
    if !wait_until(timeout, || active(agent) == want) {
        panic!(
            "{what}: active_connections stayed {} (want {want})\n{}",
            active(agent),
            tc_counters(agent)
        );
    }
}

#[test]
fn tc_nodeport_flows_count_against_max_connections_and_give_their_slots_back() {
    skip_unless!(AGENT);
    if !tcx_supported() {
        let reason = "needs TCX links (Linux 6.6+)";
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            skip_line("tc_nodeport maxconn", reason)
        );
        return;
    }
    let node1 = Node::new(1).expect("node 1");
    let outside =
        Outside::build(&node1.id().base(), &[(&node1, NODE1_IP)]).expect("lan, uplink, client");
    let args: Vec<String> = ["serve", "--name", "lim", "--tcp", "9090"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let server = node1.spawn_ready(0, "lim", &args).expect("server");
    let pod = node1.pod(0).ip();
    let dir = node1
        .write_manifests(&[("svc.yaml", manifest(&[(pod, "n1")]))])
        .expect("manifests");
    let netns = format!("/var/run/netns/{}", node1.node_netns_name());
    let start = |extra: &[&str]| {
        let mut args = vec![
            "--tc-uplink",
            "ul",
            "--tc-uplink-netns",
            &netns,
            "--node-name",
            "n1",
        ];
        args.extend(extra);
        let mut agent = node1
            .start_agent(Source::Manifests(&dir), Proxy::Off, &args)
            .expect("agent on node 1");
        agent
            .wait_log("tc path attached", Duration::from_secs(10))
            .expect("tc programs attached");
        agent
    };
    let mut agent = start(&[]);
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .status()
            .is_ok_and(|s| svc(&s, SVC)["max_connections"] == 2)),
        "the limit never reached the maps"
    );
    let client = node1
        .outside()
        .in_netns("client", &outside.client, CLIENT_IP);
    let target = addr(NODE1_IP, LIMITED_PORT);
    let hold = || node1.hold_in(&client, target);

    // Two held connections fill the limit.
    let a = hold().expect("first connection");
    let mut b = hold().expect("second connection");
    assert_eq!(b.echo("b").expect("echo"), "b");
    assert_eq!(active(&agent), 2, "{}", tc_counters(&agent));

    // The third is refused at its SYN: the client sees the RST as a refused connect.
    let r: ClientReport = serde_json::from_value(
        node1
            .run_client_in(
                &client,
                &["tcp", "--addr", &target.to_string(), "--count", "1"],
            )
            .expect("client"),
    )
    .expect("report");
    let refused = r.errors.get("ECONNREFUSED").copied().unwrap_or(0)
        + r.errors.get("ECONNRESET").copied().unwrap_or(0);
    assert_eq!((r.ok(), refused), (0, 1), "{r:?}\n{}", tc_counters(&agent));
    let s = agent.status().expect("status");
    assert_eq!(counter(&s, "tc_conn_limit_refused"), 1, "{s}");
    assert_eq!(active(&agent), 2);

    // Closing one gives its slot back at its FIN, and a new connection gets in.
    a.close().expect("closing the first");
    wait_active(&agent, 1, Duration::from_secs(5), "after a close");
    let mut c = hold().expect("a connection after the close");
    assert_eq!(c.echo("c").expect("echo"), "c");
    assert_eq!(active(&agent), 2, "{}", tc_counters(&agent));
    b.close().expect("closing the second");
    c.close().expect("closing the third");
    wait_active(&agent, 0, Duration::from_secs(5), "after every close");
    let s = agent.status().expect("status");
    assert_eq!(counter(&s, "tc_conn_released"), 3, "{s}");

    // The backend closes first (its server killed): its FIN, seen on the uplink's egress, gives
    // the slot back, well before the sweep would (its entries stay, closing, for 10 s).
    let args_for = |name: &str| -> Vec<String> {
        ["serve", "--name", name, "--tcp", "9090"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let mut e = hold().expect("a connection the backend closes");
    assert_eq!(e.echo("e").expect("echo"), "e");
    assert_eq!(active(&agent), 1);
    // SAFETY: kill(2) on the server this test spawned; the harness reaps it.
    assert_eq!(unsafe { libc::kill(server as i32, libc::SIGKILL) }, 0);
    wait_active(
        &agent,
        0,
        Duration::from_secs(3),
        "after the backend closed",
    );
    let s = agent.status().expect("status");
    assert_eq!(counter(&s, "tc_conn_released"), 4, "{s}");
    assert_eq!(counter(&s, "tc_conn_released_swept"), 0, "{s}");
    assert!(e.echo("f").is_err(), "a killed server still answers");
    drop(e);
    node1
        .spawn_ready(0, "lim-b", &args_for("lim-b"))
        .expect("second server");

    // A flow whose conntrack entries the agent removes (its backend left) never sends a FIN
    // the programs see: the sweep gives its slot back (within its 10 s period).
    let mut d = hold().expect("a connection to be orphaned");
    assert_eq!(d.echo("d").expect("echo"), "d");
    assert_eq!(active(&agent), 1);
    write(&dir, "svc.yaml", &manifest(&[])).expect("manifest without endpoints");
    agent
        .wait_log("tc conntrack swept", Duration::from_secs(10))
        .expect("the departed backend's flows forgotten");
    wait_active(&agent, 0, Duration::from_secs(25), "after the sweep");
    let s = agent.status().expect("status");
    assert_eq!(counter(&s, "tc_conn_released_swept"), 1, "{s}");
    let err = d.echo("e").expect_err("an orphaned flow still answers");
    assert!(
        format!("{err:#}").to_lowercase().contains("reset"),
        "{err:#}"
    );
    drop(d);
    for failure in [
        "tc_conn_limit_untracked",
        "tc_ct_update_failed",
        "tc_refusal_failed",
    ] {
        assert_eq!(counter(&s, failure), 0, "{failure}: {s}");
    }

    // Off switch: `--connection-limits false` leaves the flows uncounted.
    write(&dir, "svc.yaml", &manifest(&[(pod, "n1")])).expect("manifest with the endpoint");
    agent.stop().expect("stopping the agent");
    let agent = start(&["--connection-limits", "false"]);
    assert!(
        wait_until(Duration::from_secs(10), || agent.status().is_ok_and(|s| {
            svc(&s, SVC)["max_connections"].is_null()
                && svc(&s, SVC)["backends"]
                    .as_array()
                    .is_some_and(|b| b.len() == 1)
        })),
        "the limit stayed in the maps"
    );
    let mut held: Vec<_> = (0..3)
        .map(|_| hold().expect("unlimited connection"))
        .collect();
    for h in &mut held {
        assert_eq!(h.echo("x").expect("echo"), "x");
    }
    assert_eq!(active(&agent), 0, "{}", tc_counters(&agent));
}
