//! The kernel connection limit's counts return to 0 whatever way a counted connection fails:
//! a connect refused by the backend (RST), a connect that fails before its SYN (no route), a
//! socket closed in SYN_SENT, a process killed in SYN_SENT or established, and a pod's network
//! namespace torn down with its processes. The releases that sock_ops never sees are counted
//! (`conn_released_on_sock_release`), and with `--conn-limit-sock-release false` a connect that
//! failed before its SYN keeps its slot, which shows what the sock_release program is for.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use meshpath_tests::agent::{counter, svc};
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::testpod_bin;
use meshpath_tests::{addr, skip_unless, wait_until, Cluster, AGENT};

const LIMIT: u32 = 50;
/// Routed `unreachable` in the client pods: connect() fails with EHOSTUNREACH before any SYN.
const NO_ROUTE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Routed on-link to a MAC nobody has: SYNs vanish and the socket stays in SYN_SENT.
const SILENT_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// Pod 3's namespace is deleted by one test; the others never use it.
const VICTIM: usize = 3;

fn dr(host: &str) -> String {
    format!("apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  name: {host}\nspec:\n  host: {host}\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        maxConnections: {LIMIT}\n")
}

fn ip_in(netns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["-n", netns])
        .args(args)
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "ip -n {netns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// web (10.96.0.60:80 → pod 1's server), closed (10.96.0.61:80 → pod 1, a port nobody listens
/// on), noroute (10.96.0.62:80 → [`NO_ROUTE_IP`]), silent (10.96.0.63:80 → [`SILENT_IP`]), each
/// limited to [`LIMIT`] connections.
fn start(agent_args: &[&str]) -> Cluster {
    let c = Cluster::start(4, &[], agent_args);
    c.node
        .spawn_server(1, "web-1", &[8080], &[], &[])
        .expect("server");
    for pod in [0, VICTIM] {
        let ns = c.node.pod(pod).netns_name().to_owned();
        ip_in(&ns, &["route", "add", "unreachable", "10.77.0.0/16"]);
        ip_in(
            &ns,
            &["route", "add", &format!("{SILENT_IP}/32"), "dev", "eth0"],
        );
        ip_in(
            &ns,
            &[
                "neigh",
                "add",
                &SILENT_IP.to_string(),
                "lladdr",
                "02:00:00:00:00:99",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        );
    }
    let p1 = c.node.pod(1).ip();
    let svc_docs = [
        ("web", "10.96.0.60", p1, 8080),
        ("closed", "10.96.0.61", p1, 8081),
        ("noroute", "10.96.0.62", NO_ROUTE_IP, 8080),
        ("silent", "10.96.0.63", SILENT_IP, 8080),
    ]
    .iter()
    .flat_map(|(name, vip, ip, port)| {
        let target = port.to_string();
        [
            service(name, vip, 80, &target, "TCP", ""),
            endpoint_slice(name, *port, "TCP", &[Ep::ready(*ip)]),
            dr(name),
        ]
    })
    .collect::<Vec<_>>();
    c.write("heal.yaml", &docs(&svc_docs));
    c.wait_status("limits programmed", Duration::from_secs(5), |s| {
        ["web", "closed", "noroute", "silent"].iter().all(|n| {
            meshpath_tests::agent::service(s, &format!("default/{n}:"))
                .is_some_and(|x| x["max_connections"].is_u64())
        })
    });
    c
}

fn active(c: &Cluster, name: &str) -> u64 {
    svc(&c.status(), &format!("default/{name}:"))["active_connections"]
        .as_u64()
        .expect("active")
}

fn wait_active(c: &Cluster, name: &str, want: u64) {
    let reached = wait_until(Duration::from_secs(10), || active(c, name) == want);
    assert!(
        reached,
        "{name}: active {} never reached {want}",
        active(c, name)
    );
}

/// A `tcp` client in `pod` that keeps trying one connect for a minute (the SYN_SENT cases).
fn spawn_stuck_connect(c: &Cluster, pod: usize, vip: &str) -> u32 {
    let p = c.node.pod(pod);
    let mut cmd = p.command(testpod_bin().expect("testpod")).expect("cmd");
    cmd.args([
        "tcp",
        "--addr",
        &format!("{vip}:80"),
        "--timeout-ms",
        "60000",
    ]);
    p.spawn(cmd).expect("spawn")
}

/// The sample `meshpath_kernel_events_total{reason="REASON"}` of the agent's `/metrics`.
fn metric(c: &Cluster, reason: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let admin = c.agent.admin_addr().expect("admin address");
    let mut s = std::net::TcpStream::connect(admin).expect("admin listener");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let series = format!("meshpath_kernel_events_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().expect("integer sample"))
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) on a process this test started (a child the node reaps).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

#[test]
fn refused_and_unroutable_connects_give_their_slots_back() {
    skip_unless!(AGENT);
    let c = start(&[]);
    let refused = c.node.tcp(0, addr("10.96.0.61", 80), 100).expect("tcp");
    assert_eq!(
        refused.errors.get("ECONNREFUSED"),
        Some(&100),
        "{refused:?}"
    );
    let unroutable = c.node.tcp(0, addr("10.96.0.62", 80), 100).expect("tcp");
    assert_eq!(unroutable.failed(), 100, "{unroutable:?}");
    assert_eq!(unroutable.ok(), 0, "{unroutable:?}");
    wait_active(&c, "closed", 0);
    wait_active(&c, "noroute", 0);
    // More than LIMIT attempts each: had one slot leaked per failure, the limit would refuse.
    let s = c.status();
    assert_eq!(svc(&s, "default/closed:")["conn_limit_refused"], 0, "{s:#}");
    assert_eq!(
        svc(&s, "default/noroute:")["conn_limit_refused"],
        0,
        "{s:#}"
    );
    // The unroutable ones never reached sock_ops: sock_release gave every one of them back.
    assert!(counter(&s, "conn_released_on_sock_release") >= 100, "{s:#}");
    assert!(counter(&s, "conn_released") >= 200, "{s:#}");
    for failure in [
        "conn_limit_cb_flags_failed",
        "conn_track_full",
        "conn_limit_id_invalid",
    ] {
        assert_eq!(counter(&s, failure), 0, "{failure}: {s:#}");
        // Failure counters are exported even at 0, so an alert can be written on them.
        assert_eq!(metric(&c, failure), Some(0), "{failure}");
    }
    let released = metric(&c, "conn_released_on_sock_release").expect("exported");
    assert!(released >= 100, "{released}");
}

#[test]
fn without_the_sock_release_program_a_connect_failing_before_its_syn_keeps_its_slot() {
    skip_unless!(AGENT);
    let c = start(&["--conn-limit-sock-release", "false"]);
    let r = c.node.tcp(0, addr("10.96.0.62", 80), 5).expect("tcp");
    assert_eq!(r.failed(), 5, "{r:?}");
    // Nothing ever releases these: the count stays where the failures left it.
    wait_active(&c, "noroute", 5);
    assert_eq!(counter(&c.status(), "conn_released_on_sock_release"), 0);
}

#[test]
fn sockets_closed_or_killed_in_syn_sent_give_their_slots_back() {
    skip_unless!(AGENT);
    let c = start(&[]);
    // Closed by their owner in SYN_SENT (the client's connect timeout).
    let args = [
        "tcp",
        "--addr",
        "10.96.0.63:80",
        "--count",
        "5",
        "--timeout-ms",
        "200",
    ];
    let r = c.node.run_client(0, &args).expect("tcp");
    assert_eq!(r["errors"]["ETIMEDOUT"], 5, "{r:#}");
    wait_active(&c, "silent", 0);
    // Killed in SYN_SENT: counted while stuck, released at the kill.
    let pids: Vec<u32> = (0..3)
        .map(|_| spawn_stuck_connect(&c, 0, "10.96.0.63"))
        .collect();
    wait_active(&c, "silent", 3);
    for pid in pids {
        kill9(pid);
    }
    wait_active(&c, "silent", 0);
    // Killed while established.
    let holds: Vec<_> = (0..3)
        .map(|_| c.node.hold(0, addr("10.96.0.60", 80)).expect("hold"))
        .collect();
    wait_active(&c, "web", 3);
    for h in &holds {
        kill9(h.pid());
    }
    wait_active(&c, "web", 0);
    let s = c.status();
    assert!(counter(&s, "conn_released") >= 11, "{s:#}");
}

#[test]
fn deleting_a_pods_network_namespace_gives_its_slots_back() {
    skip_unless!(AGENT);
    let c = start(&[]);
    let holds: Vec<_> = (0..4)
        .map(|_| c.node.hold(VICTIM, addr("10.96.0.60", 80)).expect("hold"))
        .collect();
    let stuck: Vec<u32> = (0..4)
        .map(|_| spawn_stuck_connect(&c, VICTIM, "10.96.0.63"))
        .collect();
    wait_active(&c, "web", 4);
    wait_active(&c, "silent", 4);
    // A pod going away: every process in its namespace killed, then the namespace deleted.
    let ns = c.node.pod(VICTIM).netns_name().to_owned();
    for pid in holds.iter().map(|h| h.pid()).chain(stuck) {
        kill9(pid);
    }
    let del = Command::new("ip")
        .args(["netns", "del", &ns])
        .status()
        .expect("ip netns del");
    assert!(del.success());
    wait_active(&c, "web", 0);
    wait_active(&c, "silent", 0);
    drop(holds);
}
