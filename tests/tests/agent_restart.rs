//! Restarting, upgrading and killing the agent under load, and the kernel's fail-safe for
//! steered services while no proxy listens (see the README's "Reliability").
//!
//! fortio loads a kernel-path service (`plain`) and a steered L7 service (`web`) at once, each
//! over keep-alive connections and with a new connection per request, while the agent is
//! stopped and started again. Every request must be answered 200 and no connect refused.

use std::time::{Duration, Instant};

use meshpath_tests::agent::{counter, steered_to_proxy, steered_without_proxy, svc};
use meshpath_tests::fortio::{Load, LoadReport, Running, PORT};
use meshpath_tests::{skip_unless, Cluster, Feature, Proxy, Source, AGENT};

const PLAIN: &str = "10.96.0.95";
const WEB: &str = "10.96.0.96";
const CLOSED: &str = "10.96.0.97";
/// Pod 0 runs the clients; 1 serves `plain`, 2 and 3 serve `web` and `closed`.
const PODS: usize = 4;
const LOAD_FOR: Duration = Duration::from_secs(12);

fn needs() -> Vec<Feature> {
    let mut f = AGENT.to_vec();
    f.push(Feature::Fortio);
    f
}

fn service(name: &str, vip: &str, pods: &[std::net::Ipv4Addr]) -> String {
    let eps: String = pods
        .iter()
        .map(|ip| format!("- addresses: [\"{ip}\"]\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  clusterIP: {vip}\n  ports:\n  - name: http\n    port: 80\n    targetPort: {PORT}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: http\n  port: {PORT}\nendpoints:\n{eps}"
    )
}

/// An L7 rule (a retry policy on the one route), so the service is steered to the proxy.
fn virtual_service(name: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\nspec:\n  hosts:\n  - {name}\n  http:\n  - route:\n    - destination:\n        host: {name}\n    retries:\n      attempts: 2\n"
    )
}

/// fortio servers in pods 1-3, `plain` on the kernel path, `web` (and `closed`) steered, and the
/// agent with `extra` arguments.
fn start(extra: &[&str]) -> Cluster {
    let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
    let c = Cluster::with_proxy(PODS, |_| extra);
    for i in 1..PODS {
        c.node.spawn_fortio_server(i).expect("fortio server");
    }
    let ip = |i: usize| c.node.pod(i).ip();
    c.write("plain.yaml", &service("plain", PLAIN, &[ip(1)]));
    c.write("web.yaml", &service("web", WEB, &[ip(2), ip(3)]));
    c.write("web-vs.yaml", &virtual_service("web"));
    c.write("closed.yaml", &service("closed", CLOSED, &[ip(2), ip(3)]));
    c.write("closed-vs.yaml", &virtual_service("closed"));
    c.wait_status("web and closed steered", Duration::from_secs(10), |s| {
        steered_to_proxy(s, "default/web:") && steered_to_proxy(s, "default/closed:")
    });
    c
}

fn url(vip: &str) -> String {
    format!("http://{vip}:80/echo")
}

fn load(vip: &str, keepalive: bool) -> Load {
    Load {
        url: url(vip),
        qps: 100,
        connections: 2,
        duration: LOAD_FOR,
        requests: None,
        keepalive,
    }
}

fn connects(c: &Cluster, name: &str) -> u64 {
    svc(&c.status(), name)["connects"].as_u64().unwrap_or(0)
}

/// Waits until `name` got `n` more connects than it has now.
fn wait_connects(c: &Cluster, name: &str, n: u64, what: &str) {
    let base = connects(c, name);
    c.wait_status(what, Duration::from_secs(10), |s| {
        svc(s, name)["connects"].as_u64().unwrap_or(0) >= base + n
    });
}

fn start_agent(c: &mut Cluster, extra: &[&str]) {
    c.agent = c
        .node
        .start_agent(Source::Manifests(&c.manifests), Proxy::On, extra)
        .expect("restarting the agent");
}

/// Runs the four loads around `event` (which stops and restarts the agent), checks that steering
/// resumed while they still ran, and returns their reports. No connect may be refused and no
/// request of the kernel-path service fail; the steered service's loads may lose at most
/// `lost_in_flight` requests each (requests the proxy was serving when it was killed).
fn under_load(
    c: &mut Cluster,
    case: &str,
    lost_in_flight: u64,
    event: impl FnOnce(&mut Cluster),
) -> Vec<LoadReport> {
    let runs: Vec<Running> = [(PLAIN, true), (PLAIN, false), (WEB, true), (WEB, false)]
        .into_iter()
        .map(|(vip, ka)| c.node.start_fortio_load(0, &load(vip, ka)).expect("fortio"))
        .collect();
    wait_connects(c, "default/plain:", 20, "plain loaded");
    wait_connects(c, "default/web:", 20, "web loaded");
    let fallback_before = counter(&c.status(), "proxy_fallback");
    let t0 = Instant::now();
    event(c);
    c.wait_status("web steered again", Duration::from_secs(10), |s| {
        steered_to_proxy(s, "default/web:")
    });
    let fallback_after = counter(&c.status(), "proxy_fallback");
    // Traffic through the new proxy: web's connects rise while the fallback count stands still.
    wait_connects(c, "default/web:", 20, "web through the new proxy");
    assert_eq!(counter(&c.status(), "proxy_fallback"), fallback_after);
    let took = t0.elapsed();
    assert!(
        runs.iter().all(|r| !r.is_finished()),
        "{case}: the load ended before the agent was back ({took:?}); the run proves nothing"
    );
    let reports: Vec<LoadReport> = runs
        .into_iter()
        .map(|r| r.finish().expect("fortio"))
        .collect();
    for r in &reports {
        eprintln!(
            "RESULT {case}: {} keepalive={} sent={} failed={} refused={} codes={:?}; agent back in {took:?}, {} connects to web at L4 meanwhile",
            r.url, r.keepalive, r.sent, r.failed, r.refused, r.codes, fallback_after.saturating_sub(fallback_before)
        );
    }
    for r in &reports {
        assert!(r.sent > 500, "{case}: {r:?}");
        let allowed = if r.url == url(WEB) { lost_in_flight } else { 0 };
        assert!(
            r.failed <= allowed && r.refused == 0,
            "{case}: {r:?}\nagent log:\n{}",
            c.agent.log()
        );
    }
    reports
}

#[test]
fn sigterm_and_restart_fail_no_request() {
    skip_unless!(&needs());
    let mut c = start(&[]);
    under_load(&mut c, "SIGTERM + restart", 0, |c| {
        c.agent.stop().expect("SIGTERM");
        start_agent(c, &[]);
    });
}

/// A request the proxy is serving when it is killed is lost (fortio retries one on a reused
/// connection only when no byte of the answer came, and never on a fresh connection): at most one
/// per connection of each web load. New connects are never refused: the kernel falls back at
/// once, as the dead proxy's sockets leave the sockhash.
#[test]
fn kill_9_and_restart_refuse_no_connect() {
    skip_unless!(&needs());
    let mut c = start(&[]);
    let per_load = u64::from(load(WEB, true).connections);
    under_load(&mut c, "kill -9 + restart", per_load, |c| {
        let pid = c.agent.pid().expect("agent pid") as i32;
        // SAFETY: kill(2) on the pid of the agent child this test started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        c.agent.stop().expect("reaping the killed agent");
        start_agent(c, &[]);
    });
}

/// An upgrade to a build whose maps are defined differently: while the old agent serves, its
/// pins of the services, backends and counters maps are swapped for maps of another definition
/// (what an older build would have pinned); the new agent replaces them with fresh maps and
/// must not attach its programs before those hold the model.
#[test]
fn upgrade_with_replaced_maps_fail_no_request() {
    skip_unless!(&needs());
    let mut c = start(&[]);
    under_load(&mut c, "upgrade (maps replaced)", 0, |c| {
        for (name, key, value) in [
            ("MP_SERVICES", 12, 16),
            ("MP_BACKENDS", 4, 8),
            ("MP_COUNTERS", 4, 8),
        ] {
            let pin = c.node.pin_dir().join(name);
            std::fs::remove_file(&pin).expect("unpin");
            let ok = std::process::Command::new("bpftool")
                .args(["map", "create"])
                .arg(&pin)
                .args([
                    "type",
                    if name == "MP_COUNTERS" {
                        "percpu_array"
                    } else {
                        "hash"
                    },
                ])
                .args(["key", &key.to_string(), "value", &value.to_string()])
                .args(["entries", "1024", "name", name])
                .status()
                .expect("bpftool map create")
                .success();
            assert!(ok, "bpftool map create {name}");
        }
        c.agent.stop().expect("SIGTERM");
        start_agent(c, &[]);
        assert!(
            c.agent.log().contains("pinned map had another definition"),
            "{}",
            c.agent.log()
        );
    });
}

/// The proxy gone (agent killed): a fail-open steered service is balanced at L4 by the kernel,
/// counted as `proxy_fallback`; a fail-closed one is refused at once, counted as
/// `proxy_down_refused`. A new agent steers both to its proxy again.
#[test]
fn without_a_proxy_steered_services_fall_back_or_refuse_and_steering_resumes() {
    skip_unless!(&needs());
    let closed_flag = ["--proxy-fail-closed", "default/closed"];
    let mut c = start(&closed_flag);
    let status = c.status();
    assert_eq!(
        svc(&status, "default/closed:")["proxy"]["fail_closed"],
        true
    );
    assert_eq!(svc(&status, "default/web:")["proxy"]["fail_closed"], false);

    let pid = c.agent.pid().expect("agent pid") as i32;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    c.agent.stop().expect("reaping the killed agent");
    // The kernel dropped the dead proxy's sockets from the sockhash.
    c.wait_status("no proxy listening", Duration::from_secs(5), |s| {
        steered_without_proxy(s, "default/web:") && steered_without_proxy(s, "default/closed:")
    });

    let burst = |vip: &str, keepalive: bool| Load {
        requests: Some(100),
        qps: 0,
        connections: 2,
        ..load(vip, keepalive)
    };
    let before = c.status();
    let open = c
        .node
        .start_fortio_load(0, &burst(WEB, false))
        .expect("fortio");
    let open = open.finish().expect("fortio");
    let refused = c
        .node
        .start_fortio_load(0, &burst(CLOSED, false))
        .expect("fortio");
    let refused = refused.finish().expect("fortio");
    let during = c.status();
    eprintln!("RESULT proxy down: web {open:?}\nRESULT proxy down: closed {refused:?}");
    assert_eq!((open.ok, open.failed), (100, 0), "{open:?}");
    let fell_back = counter(&during, "proxy_fallback") - counter(&before, "proxy_fallback");
    assert!(fell_back >= 100, "proxy_fallback rose by {fell_back}");
    assert_eq!(refused.ok, 0, "{refused:?}");
    assert!(refused.refused >= 100, "{refused:?}");
    let down_refused =
        counter(&during, "proxy_down_refused") - counter(&before, "proxy_down_refused");
    assert!(
        down_refused >= 100,
        "proxy_down_refused rose by {down_refused}"
    );

    start_agent(&mut c, &closed_flag);
    c.wait_status("steered again", Duration::from_secs(10), |s| {
        steered_to_proxy(s, "default/web:") && steered_to_proxy(s, "default/closed:")
    });
    let after = c.status();
    for vip in [WEB, CLOSED] {
        let r = c
            .node
            .start_fortio_load(0, &burst(vip, true))
            .expect("fortio");
        let r = r.finish().expect("fortio");
        assert_eq!((r.ok, r.failed), (100, 0), "{r:?}");
    }
    let end = c.status();
    // Through the proxy again: no fallback, no refusal since the restart.
    assert_eq!(
        counter(&end, "proxy_fallback"),
        counter(&after, "proxy_fallback")
    );
    assert_eq!(
        counter(&end, "proxy_down_refused"),
        counter(&after, "proxy_down_refused")
    );
}
