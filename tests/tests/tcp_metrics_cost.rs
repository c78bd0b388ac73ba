//! What Istio's kernel TCP metrics cost the data path, counted by the kernel itself: with the
//! metrics on, the sock_ops program runs a bounded number of times per connection (connect,
//! establishment, state changes), never per request or per ACK, on keep-alive connections carrying
//! thousands of requests. The kernel's own BPF run statistics (`run_cnt`, `run_time_ns`) are
//! switched on for the test's duration through a `BPF_ENABLE_STATS` descriptor, which leaves the
//! `kernel.bpf_stats_enabled` sysctl as it is and switches them off again when dropped.

use std::time::Duration;

use meshpath_tests::bpf_stats;
use meshpath_tests::fortio::Load;
use meshpath_tests::skip_unless;

const VIP: &str = "10.96.0.41";
const REQUESTS: u32 = 4000;
const CONNECTIONS: u32 = 4;
/// sock_ops calls per connection, both ends together, with room to spare: a handful of
/// setup callbacks and one per state change. Any per-packet callback would exceed it by far.
const PER_CONNECTION_BOUND: u64 = 50;

#[test]
fn tcp_metrics_cost_sock_ops_a_bounded_number_of_runs_per_connection() {
    skip_unless!(&bpf_stats::needs());
    let c = bpf_stats::fortio_service(VIP, &["--tcp-metrics", "true"]);
    let _stats = bpf_stats::enable().expect("BPF run statistics");
    let progs: Vec<(String, u64)> = bpf_stats::programs(c.node.cgroup_path(), c.node.pin_dir())
        .expect("the node's programs")
        .into_iter()
        .filter(|(name, _)| name == "mp_sockops")
        .collect();
    assert_eq!(
        progs.len(),
        1,
        "one mp_sockops on the node's cgroup: {progs:?}"
    );
    let run_stats = || bpf_stats::sample(&progs).expect("run statistics")["mp_sockops"];
    let before = run_stats();
    let load = Load {
        url: format!("http://{VIP}/echo"),
        qps: 0,
        connections: CONNECTIONS,
        duration: Duration::from_secs(30),
        requests: Some(REQUESTS),
        keepalive: true,
    };
    let report = c
        .node
        .start_fortio_load(0, &load)
        .expect("fortio")
        .finish()
        .expect("fortio");
    let after = run_stats();
    assert_eq!(report.ok, u64::from(REQUESTS), "{report:?}");
    let runs = after.0 - before.0;
    let ns = after.1 - before.1;
    eprintln!(
        "RESULT sock_ops: {runs} runs, {ns} ns for {REQUESTS} requests on {CONNECTIONS} \
         keep-alive connections: {:.4} runs and {:.1} ns per request",
        runs as f64 / f64::from(REQUESTS),
        ns as f64 / f64::from(REQUESTS)
    );
    let opened = meshpath_tests::agent::counter(&c.status(), "tcp_metrics_opened");
    assert!(
        opened >= u64::from(CONNECTIONS),
        "the metrics did not count the connections ({opened})"
    );
    assert!(
        runs <= PER_CONNECTION_BOUND * u64::from(CONNECTIONS),
        "sock_ops ran {runs} times for {REQUESTS} requests on {CONNECTIONS} connections: \
         per-packet work on the fast path"
    );
}
