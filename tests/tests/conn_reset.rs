//! Existing connections follow endpoint changes: a keep-alive connection the kernel balanced to a
//! backend that then leaves its service is reset by the agent (the client's request on it fails), and the
//! client's next connect reaches a backend still in the service; the agent counts it under
//! `meshpath_connections_reset_total{reason="backend_removed"}`. (A service that becomes
//! steered to the proxy: `l7_seed.rs`, `…_applies_to_open_connections`.)

mod seed;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use meshpath_tests::manifests::docs;
use meshpath_tests::{skip_unless, wait_until, Cluster, AGENT};
use seed::*;

const MS: u64 = 1000; // µs
const NAME: &str = "springboot-app-svc";

fn metrics(c: &Cluster) -> String {
    let admin = c.agent.admin_addr().expect("admin address");
    let mut s = TcpStream::connect(admin).expect("admin listener");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("response");
    buf
}

fn reset_count(text: &str, reason: &str) -> u64 {
    let series = format!("meshpath_connections_reset_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().expect("integer sample"))
}

#[test]
fn removing_a_backend_resets_the_connections_to_it_and_the_client_reconnects_to_a_live_one() {
    skip_unless!(AGENT);
    let c = start(3);
    let logs = [serve(&c, 1, "v1", 0), serve(&c, 2, "v2", 0)];
    let both = [(1, "v1"), (2, "v2")];
    c.write("app.yaml", &docs(&[app(&c, NAME, APP, &both)]));
    c.wait_status("kernel path", Duration::from_secs(5), |s| {
        meshpath_tests::agent::service(s, "default/springboot-app-svc:")
            .is_some_and(|r| r["backends"].as_array().map(Vec::len) == Some(2))
    });

    let mut gone = None;
    let (r, at) = traffic_during(&c, &[], 100, || {
        // The one keep-alive connection went to one pod: that pod leaves the service.
        let on = usize::from(hosts(&logs[0]).is_empty());
        let live = both[1 - on];
        c.write("app.yaml", &docs(&[app(&c, NAME, APP, &[live])]));
        gone = Some(both[on].1);
    });
    let gone = gone.expect("edited");
    let live = if gone == "v1" { "v2" } else { "v1" };
    let failed: Vec<_> = r.requests.iter().filter(|q| q.status != 200).collect();
    let summary = (&r.counts, &r.errors);
    assert_eq!(
        failed.len(),
        1,
        "exactly the request on the reset connection fails: {summary:?}\n{}",
        c.agent.log()
    );
    let reset = failed[0];
    // The kernel aborts a destroyed socket with ECONNABORTED (ECONNRESET on older kernels).
    assert!(
        ["ECONNABORTED", "ECONNRESET"].contains(&reset.body.as_str()),
        "{reset:?}"
    );
    assert!(
        reset.at_us >= at && reset.at_us < at + 1000 * MS,
        "{reset:?} at {at}"
    );
    let split = r
        .requests
        .iter()
        .position(|q| q.status != 200)
        .expect("the reset");
    assert!(split > 0, "{r:?}");
    assert!(r.requests[..split].iter().all(|q| q.body == gone), "{r:?}");
    let after = &r.requests[split + 1..];
    assert!(!after.is_empty(), "{r:?}");
    assert!(after.iter().all(|q| q.body == live), "{r:?}");

    let counted = wait_until(Duration::from_secs(5), || {
        reset_count(&metrics(&c), "backend_removed") >= 1
    });
    assert!(counted, "{}", metrics(&c));
    assert_eq!(reset_count(&metrics(&c), "service_steered"), 0);
}
