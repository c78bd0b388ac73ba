//! Editing the manifests of a running agent: EndpointSlice changes reach NEW connections within
//! 1 s of the write while established connections keep working; bad input is reported with file,
//! object and field, and what was programmed before stays live and keeps serving.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use meshpath_tests::agent::{backends, svc};
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{addr, skip_unless, wait_until, Cluster, AGENT};

const RR: &str = "  annotations:\n    meshpath.io/lb-policy: round-robin\n";

fn web(eps: &[Ep]) -> String {
    let svc = service("web", "10.96.0.10", 80, "8080", "TCP", "").replace(
        "  namespace: default\n",
        &format!("  namespace: default\n{RR}"),
    );
    docs(&[svc, endpoint_slice("web", 8080, "TCP", eps)])
}

fn start(pods: usize) -> (Cluster, Vec<Ipv4Addr>) {
    let c = Cluster::start(pods, &[], &[]);
    for i in 1..pods {
        c.node
            .spawn_server(i, &format!("web-{i}"), &[8080], &[], &[])
            .expect("server");
    }
    let ips: Vec<Ipv4Addr> = (0..pods).map(|i| c.node.pod(i).ip()).collect();
    c.write(
        "web.yaml",
        &web(&[Ep::ready(ips[1]), Ep::ready(ips[2]), Ep::ready(ips[3])]),
    );
    c.wait_status("3 backends", Duration::from_secs(5), |s| {
        meshpath_tests::agent::service(s, "default/web:")
            .is_some_and(|w| w["backends"].as_array().map(Vec::len) == Some(3))
    });
    (c, ips)
}

/// Writes `content`, then connects (round robin, so 3 connects visit every backend) until `ok`
/// holds for a whole round; returns the time from the write to that round.
fn time_until(
    c: &Cluster,
    content: &str,
    ok: impl Fn(&meshpath_tests::ClientReport) -> bool,
) -> Duration {
    let written = Instant::now();
    c.write("web.yaml", content);
    loop {
        let r = c
            .node
            .tcp(0, addr("10.96.0.10", 80), 6)
            .expect("tcp client");
        if ok(&r) {
            return written.elapsed();
        }
        assert!(
            written.elapsed() < Duration::from_secs(5),
            "edit never took effect: {r:?}\n{}",
            c.agent.log()
        );
    }
}

#[test]
fn endpoint_edits_reach_new_connections_within_a_second_and_only_removal_resets_established_ones() {
    skip_unless!(AGENT);
    let (c, ips) = start(5); // pod 4 runs web-4 but is not in the slice yet
    let mut held = c.node.hold(0, addr("10.96.0.10", 80)).expect("hold");
    let held_name = held.name().to_string();
    let held_idx: usize = held_name.trim_start_matches("web-").parse().expect("web-N");
    assert_eq!(held.peer(), "10.96.0.10:80");

    // 1. The held backend becomes not ready.
    let mut eps: Vec<Ep> = (1..=3).map(|i| Ep::ready(ips[i])).collect();
    eps[held_idx - 1] = Ep::not_ready(ips[held_idx]);
    let took = time_until(&c, &web(&eps), |r| r.ok() == 6 && r.count(&held_name) == 0);
    eprintln!("not-ready: new connections saw it {took:?} after the write");
    assert!(took < Duration::from_secs(1), "not-ready took {took:?}");
    let r = c.node.tcp(0, addr("10.96.0.10", 80), 300).expect("tcp");
    assert_eq!((r.ok(), r.count(&held_name)), (300, 0), "{r:?}");
    assert_eq!(
        held.echo("still there?")
            .expect("echo on the established connection"),
        "still there?"
    );

    // 2. It is removed from the slice altogether.
    eps.remove(held_idx - 1);
    let took = time_until(&c, &web(&eps), |r| r.ok() == 6 && r.count(&held_name) == 0);
    eprintln!("removal: new connections saw it {took:?} after the write");
    assert!(took < Duration::from_secs(1), "removal took {took:?}");
    assert_eq!(backends(&c.status(), "default/web:").len(), 2);
    // Out of the slice, the agent resets the connections to it (a not-ready endpoint keeps
    // them, above): the client's next connect goes to a backend still in the service.
    let reset = wait_until(Duration::from_secs(2), || {
        held.echo("after removal").is_err()
    });
    assert!(
        reset,
        "the connection to the removed backend was not reset\n{}",
        c.agent.log()
    );
    let _ = held.close();
    let mut held = c.node.hold(0, addr("10.96.0.10", 80)).expect("hold");
    assert_ne!(held.name(), held_name, "reconnected to the removed backend");
    assert_eq!(held.echo("reconnected").expect("echo"), "reconnected");

    // 3. A new backend (pod 4) is added.
    eps.push(Ep::ready(ips[4]));
    let took = time_until(&c, &web(&eps), |r| r.count("web-4") == 2);
    eprintln!("addition: new connections saw it {took:?} after the write");
    assert!(took < Duration::from_secs(1), "addition took {took:?}");
    assert_eq!(held.echo("after addition").expect("echo"), "after addition");
    held.close().expect("close");
}

/// One broken edit of the live file: the error names file, object and field; the old config keeps
/// serving, and a fixed file is picked up again.
fn assert_rejected_and_still_serving(c: &Cluster, good: &str, bad: &str, needles: &[&str]) {
    c.write("web.yaml", bad);
    let mut all = vec!["web.yaml"];
    all.extend_from_slice(needles);
    c.wait_log(&all, Duration::from_secs(5));
    let r = c.node.tcp(0, addr("10.96.0.10", 80), 9).expect("tcp");
    assert_eq!(
        r.ok(),
        9,
        "the last good config must keep serving after {needles:?}: {r:?}"
    );
    assert_eq!(backends(&c.status(), "default/web:").len(), 3);
    // The fixed file is read again before the next edit: after a parse error the agent logs
    // that its errors are resolved, after one the compiler found that the manifests loaded.
    let reread = || c.log_count("manifest errors resolved") + c.log_count("manifests loaded");
    let before = reread();
    c.write("web.yaml", good);
    let again = wait_until(Duration::from_secs(5), || reread() > before);
    assert!(
        again,
        "the fixed web.yaml was not read again:\n{}",
        c.agent.log()
    );
}

#[test]
fn bad_input_is_named_and_the_last_good_config_keeps_serving() {
    skip_unless!(AGENT);
    let (c, ips) = start(4);
    let good = web(&[Ep::ready(ips[1]), Ep::ready(ips[2]), Ep::ready(ips[3])]);

    // Malformed YAML.
    assert_rejected_and_still_serving(
        &c,
        &good,
        &good.replace("ports:\n  - name: p", "ports:\n  - name: [p"),
        &["invalid YAML"],
    );
    // A Service without ports.
    let no_ports = good.replace(
        "  ports:\n  - name: p\n    port: 80\n    targetPort: 8080\n    protocol: TCP\n",
        "",
    );
    assert_rejected_and_still_serving(
        &c,
        &good,
        &no_ports,
        &["Service default/web", "spec.ports", "at least one port"],
    );
    // An IP that does not parse.
    assert_rejected_and_still_serving(
        &c,
        &good,
        &good.replace("10.96.0.10", "10.96.0.300"),
        &["Service default/web", "spec.clusterIP", "10.96.0.300"],
    );
    let bad_ep = good.replacen(&format!("\"{}\"", ips[2]), "\"10.244.0.999\"", 1);
    assert_rejected_and_still_serving(
        &c,
        &good,
        &bad_ep,
        &[
            "EndpointSlice default/web-1",
            "endpoints[1].addresses[0]",
            "10.244.0.999",
        ],
    );
    // A duplicate YAML key.
    assert_rejected_and_still_serving(
        &c,
        &good,
        &good.replace("    port: 80\n", "    port: 80\n    port: 81\n"),
        &["duplicate", "port"],
    );
    // A targetPort name no EndpointSlice carries (found when compiling, not when parsing).
    let named = good
        .replace("targetPort: 8080", "targetPort: web-port")
        .replace("- name: p\n  port: 8080", "- name: metrics\n  port: 8080");
    assert_rejected_and_still_serving(
        &c,
        &good,
        &named,
        &[
            "Service default/web",
            "spec.ports[0].targetPort",
            "\"web-port\"",
        ],
    );

    // An unknown kind is skipped with a debug line and is no error.
    c.write(
        "other.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
    );
    c.wait_log(
        &["skipping object of a kind meshpath does not use", "Widget"],
        Duration::from_secs(5),
    );
    assert_eq!(
        c.node.tcp(0, addr("10.96.0.10", 80), 3).expect("tcp").ok(),
        3
    );
}

#[test]
fn status_reads_the_pinned_maps_after_the_agent_stopped_and_traffic_keeps_flowing() {
    skip_unless!(AGENT);
    let (mut c, _ips) = start(4);
    assert_eq!(
        c.node.tcp(0, addr("10.96.0.10", 80), 30).expect("tcp").ok(),
        30
    );
    c.agent.stop().expect("stop agent");

    let s = svc(
        &c.agent.status().expect("status after stop"),
        "default/web:",
    )
    .clone();
    assert_eq!(s["connects"], 30);
    assert_eq!(s["backends"].as_array().map(Vec::len), Some(3));
    // Programs stay attached (pinned links) while no agent runs.
    let r = c.node.tcp(0, addr("10.96.0.10", 80), 9).expect("tcp");
    assert_eq!(r.ok(), 9, "{r:?}");
    assert_eq!(
        svc(&c.agent.status().expect("status"), "default/web:")["connects"],
        39
    );
}
