//! What the kernel programs themselves cost per connection, counted by the kernel's BPF run
//! statistics (see `meshpath_tests::bpf_stats`): short connections (one request each) through a
//! ClusterIP with socket redirection on for every socket, then requests on a few kept-alive
//! connections. Prints each program's runs per connection and nanoseconds per run (`RESULT`
//! lines; `KEEPALIVE` lines per request); asserts what must hold on any machine (each connect
//! ran connect4 once, sock_ops a bounded number of times per connection and not per request,
//! the messages were redirected), not the timings, which depend on the machine's load.

use meshpath_tests::bpf_stats;
use meshpath_tests::skip_unless;

const VIP: &str = "10.96.0.42";
const CONNECTIONS: u32 = 3000;
/// sock_ops callbacks per connection, both ends together: the kernel's fixed set at setup
/// (timeout, window, ECN, base RTT), connect and establishment, and one per state change.
const SOCK_OPS_BOUND: f64 = 24.0;

#[test]
fn kernel_cost_per_program_over_short_connections_with_redirection() {
    skip_unless!(&bpf_stats::needs());
    let c = bpf_stats::fortio_service(VIP, &["--socket-redirect", "all"]);
    let url = format!("http://{VIP}/echo");
    let before = c.status();
    let m = bpf_stats::measure(&c.node, 0, &url, CONNECTIONS).expect("measuring");
    let after = c.status();
    let counter = |name: &str| {
        meshpath_tests::agent::counter(&after, name) - meshpath_tests::agent::counter(&before, name)
    };
    let redirected = counter("msg_redirected");
    // What the programs did, per connection: tells a cheap early return from a full run.
    if let Some(names) = after["counters"].as_object() {
        for name in names.keys() {
            let n = counter(name);
            if n > 0 {
                eprintln!(
                    "EVENTS {name}: {:.2} per connection",
                    n as f64 / f64::from(CONNECTIONS)
                );
            }
        }
    }
    print_programs("RESULT", "connection", &m);
    let connect4 = m.get("mp_connect4").expect("connect4 did not run");
    assert!(
        connect4.runs >= u64::from(CONNECTIONS),
        "connect4 ran {} times for {CONNECTIONS} connects",
        connect4.runs
    );
    let sockops = m.get("mp_sockops").expect("sock_ops did not run");
    assert!(
        sockops.runs_per_connection <= SOCK_OPS_BOUND,
        "sock_ops ran {:.1} times per connection",
        sockops.runs_per_connection
    );
    assert_redirected("short connections", redirected, &m);

    // The same requests on kept-alive connections: sk_msg per message on sockets in use a
    // while, where a short connection's first messages find the peer's entry just written by
    // another CPU.
    let before = c.status();
    let k = bpf_stats::measure_keepalive(&c.node, 0, &url, CONNECTIONS).expect("measuring");
    let redirected = meshpath_tests::agent::counter(&c.status(), "msg_redirected")
        - meshpath_tests::agent::counter(&before, "msg_redirected");
    print_programs("KEEPALIVE", "request", &k);
    assert_redirected("kept alive", redirected, &k);
    // Only the connections' own callbacks: none per request.
    let per_connection = k.get("mp_sockops").map_or(0, |p| p.runs);
    let bound = SOCK_OPS_BOUND * f64::from(bpf_stats::CLIENT_CONNECTIONS);
    assert!(
        per_connection as f64 <= bound,
        "kept alive: sock_ops ran {per_connection} times over {} connections",
        bpf_stats::CLIENT_CONNECTIONS
    );
}

/// One line per program: `TAG name: runs, runs per `unit`, ns per run`.
fn print_programs(tag: &str, unit: &str, m: &bpf_stats::Measured) {
    for p in &m.programs {
        eprintln!(
            "{tag} {}: {} runs, {:.2} per {unit}, {:.0} ns per run",
            p.name, p.runs, p.runs_per_connection, p.ns_per_run
        );
    }
}

/// Every request's messages went through sk_msg and were redirected.
fn assert_redirected(what: &str, redirected: u64, m: &bpf_stats::Measured) {
    let skmsg = m.get("mp_skmsg").expect("sk_msg did not run");
    assert!(
        redirected >= u64::from(CONNECTIONS) && skmsg.runs >= redirected,
        "{what}: {redirected} messages redirected, sk_msg ran {} times, for {CONNECTIONS} requests",
        skmsg.runs
    );
}
