//! What Istio's kernel TCP metrics cost the data path, counted by the kernel itself: with the
//! metrics on, the sock_ops program runs a bounded number of times per connection (connect,
//! establishment, state changes), never per request or per ACK, on keep-alive connections carrying
//! thousands of requests. The kernel's own BPF run statistics (`run_cnt`, `run_time_ns`) are
//! switched on for the test's duration through a `BPF_ENABLE_STATS` descriptor, which leaves the
//! `kernel.bpf_stats_enabled` sysctl as it is and switches them off again when dropped.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meshpath_tests::fortio::{Load, PORT};
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{skip_unless, Cluster, Feature, AGENT};

const VIP: &str = "10.96.0.41";
const REQUESTS: u32 = 4000;
const CONNECTIONS: u32 = 4;
/// sock_ops calls per connection, both ends together, with room to spare: a handful of
/// setup callbacks and one per state change. Any per-packet callback would exceed it by far.
const PER_CONNECTION_BOUND: u64 = 50;

fn needs() -> Vec<Feature> {
    let mut f = AGENT.to_vec();
    f.push(Feature::Fortio);
    f
}

/// Keeps the kernel's BPF run statistics on while it lives.
fn enable_stats() -> OwnedFd {
    /// `union bpf_attr` for `BPF_ENABLE_STATS`: `type` = `BPF_STATS_RUN_TIME` (0).
    #[repr(C)]
    struct Attr {
        kind: u32,
    }
    const BPF_ENABLE_STATS: libc::c_long = 32;
    let mut attr = Attr { kind: 0 };
    // SAFETY: a valid attr of the size given; the command returns a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            &mut attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    assert!(
        fd >= 0,
        "BPF_ENABLE_STATS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).expect("bpftool JSON")
}

/// The id of the sock_ops program attached to `cgroup` (this test's agent's, no other's).
fn sockops_id(cgroup: &Path) -> u64 {
    let progs = bpftool(&["cgroup", "show", &cgroup.to_string_lossy()]);
    progs
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "mp_sockops")
        .and_then(|p| p["id"].as_u64())
        .unwrap_or_else(|| panic!("no mp_sockops on {}: {progs}", cgroup.display()))
}

/// (run_cnt, run_time_ns) of program `id`.
fn run_stats(id: u64) -> (u64, u64) {
    let p = bpftool(&["prog", "show", "id", &id.to_string()]);
    (
        p["run_cnt"].as_u64().unwrap_or(0),
        p["run_time_ns"].as_u64().unwrap_or(0),
    )
}

#[test]
fn tcp_metrics_cost_sock_ops_a_bounded_number_of_runs_per_connection() {
    skip_unless!(&needs());
    let c = Cluster::start(2, &[], &["--tcp-metrics", "true"]);
    c.node.spawn_fortio_server(1).expect("fortio server");
    let web_ip = c.node.pod(1).ip();
    c.write(
        "web.yaml",
        &docs(&[
            service("web", VIP, 80, &PORT.to_string(), "TCP", ""),
            endpoint_slice("web", PORT, "TCP", &[Ep::ready(web_ip)]),
        ]),
    );
    c.wait_status("web programmed", Duration::from_secs(10), |s| {
        meshpath_tests::agent::service(s, "default/web:").is_some()
    });
    let _stats = enable_stats();
    let id = sockops_id(c.node.cgroup_path());
    let before = run_stats(id);
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
    let after = run_stats(id);
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
