//! DNS proxying against real resolver libraries: pods resolve Service names through the agent
//! (glibc `getent`, Python's `getaddrinfo`, Go's own resolver, Java's `InetAddress`, `dig +tcp`,
//! raw UDP and TCP queries), names the agent does not own reach the resolver the pod asked (a responder this test
//! runs on the pods' gateway, inside the test's node namespace), ExternalName Services answer with
//! a CNAME, and neither a process outside the managed cgroups nor any pod with
//! `--dns-capture false` is captured.
//!
//! Pods get a Kubernetes-style resolv.conf (nameserver + search list + ndots:5) by running each
//! client under `unshare -m` with that file bind-mounted over /etc/resolv.conf: the mount lives
//! only in the client's private mount namespace.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use meshpath_tests::agent::counter;
use meshpath_tests::manifests::docs;
use meshpath_tests::{Cluster, Pod, AGENT, PROXY_IP};

/// The pods' resolver: the responder, on the pods' gateway in the node namespace (where the
/// agent's node proxy, and so its DNS listeners, listen too).
const RESOLVER: &str = PROXY_IP;
/// What the responder answers for every name under example.test.
const UPSTREAM_ANSWER: &str = "192.0.2.99";
const WEB_IP: &str = "10.96.0.20";
const CART_IP: &str = "10.96.0.21";

const RESPONDER: &str = include_str!("dns/responder.py");
const QUERY: &str = include_str!("dns/query.py");
const GO_LOOKUP: &str = include_str!("dns/lookup.go");
const JAVA_LOOKUP: &str = include_str!("dns/Lookup.java");

fn services() -> String {
    docs(&[
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: springboot-app-svc\nspec:\n  clusterIP: {WEB_IP}\n  ports:\n  - port: 8080\n"),
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: cart\n  namespace: shop\nspec:\n  clusterIP: {CART_IP}\n  ports:\n  - port: 80\n"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\n  namespace: shop\nspec:\n  type: ExternalName\n  externalName: db.example.test\n".into(),
    ])
}

struct Dns {
    cluster: Cluster,
    work: PathBuf,
    responder_log: PathBuf,
}

/// A node with the agent (DNS capture as `capture` says) and the responder running.
fn start(capture: &str) -> Option<Dns> {
    start_with(capture, false)
}

/// As [`start`]; `agent_managed` moves the agent into the managed cgroup.
fn start_with(capture: &str, agent_managed: bool) -> Option<Dns> {
    // Prints the skip line and returns None when the machine lacks a feature.
    meshpath_tests::privileged(AGENT)?;
    for tool in ["python3", "unshare", "getent"] {
        if !on_path(tool) {
            eprintln!("skipping: {tool} not found on PATH");
            return None;
        }
    }
    let capture = capture.to_owned();
    let cluster = Cluster::with_proxy(2, move |node| {
        let mut args: Vec<String> = if agent_managed {
            vec![
                "--agent-cgroup".into(),
                node.cgroup_path().join("agent").display().to_string(),
            ]
        } else {
            vec![]
        };
        args.extend([
            "--dns-capture".into(),
            capture,
            "--dns-upstream".into(),
            RESOLVER.into(),
        ]);
        args
    });
    let work = cluster.node.work_dir().to_path_buf();
    std::fs::write(work.join("responder.py"), RESPONDER).expect("write");
    std::fs::write(work.join("query.py"), QUERY).expect("write");
    std::fs::write(
        work.join("resolv.conf"),
        format!("nameserver {RESOLVER}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:2 attempts:2\n"),
    )
    .expect("write");
    let responder_log = work.join("responder.log");
    let child = Command::new("ip")
        .args(["netns", "exec", cluster.node.node_netns_name(), "python3"])
        .arg(work.join("responder.py"))
        .args([RESOLVER, "53"])
        .arg(&responder_log)
        .arg(UPSTREAM_ANSWER)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the responder");
    cluster.node.adopt("responder", child);
    wait_for("responder ready", Duration::from_secs(10), || {
        read(&responder_log).contains("ready")
    });
    cluster.write("services.yaml", &services());
    let dns = Dns {
        cluster,
        work,
        responder_log,
    };
    Some(dns)
}

impl Dns {
    /// Runs `args` in `pod` with the pod resolv.conf, under a timeout.
    fn run(&self, pod: &Pod, args: &[&str]) -> Output {
        let mut cmd = pod.command("timeout").expect("pod command");
        cmd.args(["30", "unshare", "-m", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
            .arg(self.work.join("resolv.conf"))
            .args(args)
            .stdin(Stdio::null());
        cmd.output().expect("running a pod client")
    }

    fn stdout(&self, pod: &Pod, args: &[&str]) -> String {
        let out = self.run(pod, args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "{args:?} in {}: {} {text:?} {:?}",
            pod.label(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn responder_saw(&self, line: &str) -> bool {
        read(&self.responder_log).lines().any(|l| l == line)
    }

    fn metrics(&self) -> String {
        let admin = self.cluster.agent.admin_addr().expect("admin address");
        let mut s = std::net::TcpStream::connect(admin).expect("admin");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics:\n{text}"))
}

#[test]
fn pods_resolve_services_through_the_agent_and_the_rest_through_their_resolver() {
    let Some(d) = start("true") else { return };
    let c = &d.cluster;
    let pod = c.node.pod(0);
    // The agent has the names once it programmed the manifest (the DNS frontend is there at once).
    c.wait_log(
        &["DNS listener open", "dns_resolvers=1"],
        Duration::from_secs(10),
    );
    wait_for("the Services are served", Duration::from_secs(10), || {
        d.stdout(pod, &["getent", "hosts", "springboot-app-svc"])
            .starts_with(WEB_IP)
    });

    // glibc over UDP: the search list finds the same-namespace name, `x.ns` and the FQDN.
    for name in [
        "springboot-app-svc.default.svc.cluster.local",
        "springboot-app-svc.default",
    ] {
        let out = d.stdout(pod, &["getent", "hosts", name]);
        assert!(out.starts_with(WEB_IP), "{name}: {out:?}");
    }
    let out = d.stdout(pod, &["getent", "hosts", "cart.shop"]);
    assert!(out.starts_with(CART_IP), "{out:?}");
    // Python's getaddrinfo.
    let out = d.stdout(
        pod,
        &[
            "python3",
            "-c",
            "import socket,sys; print(socket.getaddrinfo(sys.argv[1], 8080, socket.AF_INET)[0][4][0])",
            "springboot-app-svc",
        ],
    );
    assert_eq!(out.trim(), WEB_IP);

    // Raw queries: UDP unconnected (sendmsg/recvmsg) and TCP; the reply shows the resolver's
    // address as its source although the agent's listener sent it.
    let query = d.work.join("query.py");
    let query = query.to_str().expect("utf-8 path");
    for proto in ["udp", "tcp"] {
        let out = d.stdout(
            pod,
            &[
                "python3",
                query,
                proto,
                RESOLVER,
                "cart.shop.svc.cluster.local",
            ],
        );
        assert!(
            out.contains(&format!("from {RESOLVER}:53")),
            "{proto}: {out}"
        );
        assert!(out.contains(&format!("A {CART_IP}")), "{proto}: {out}");
    }
    if on_path("dig") {
        let out = d.stdout(
            pod,
            &[
                "dig",
                "+tcp",
                "+short",
                "springboot-app-svc.default.svc.cluster.local",
            ],
        );
        assert_eq!(out.trim(), WEB_IP);
    } else {
        eprintln!("dig not installed (bind9-dnsutils): dig +tcp step skipped");
    }

    // Not a Service: relayed to the pod's resolver, which sees the agent (the gateway address),
    // not the pod, as the client.
    let out = d.stdout(pod, &["getent", "hosts", "www.example.test"]);
    assert!(out.starts_with(UPSTREAM_ANSWER), "{out:?}");
    assert!(d.responder_saw(&format!("udp {RESOLVER} www.example.test 1")));
    let out = d.stdout(
        pod,
        &["python3", query, "tcp", RESOLVER, "nope.example.org"],
    );
    assert!(out.contains("rcode 3"), "NXDOMAIN relayed over TCP: {out}");
    assert!(d.responder_saw(&format!("tcp {RESOLVER} nope.example.org 1")));

    // ExternalName: a CNAME, whose target the agent resolves through the pod's resolver.
    let out = d.stdout(
        pod,
        &[
            "python3",
            query,
            "udp",
            RESOLVER,
            "db.shop.svc.cluster.local",
        ],
    );
    assert!(out.contains("CNAME db.example.test"), "{out}");
    assert!(out.contains(&format!("A {UPSTREAM_ANSWER}")), "{out}");
    let out = d.stdout(pod, &["getent", "hosts", "db.shop.svc.cluster.local"]);
    assert!(
        out.starts_with(UPSTREAM_ANSWER) && out.contains("db.example.test"),
        "{out:?}"
    );

    // Go's own resolver (its UDP queries, its search-list logic).
    if on_path("go") {
        let src = d.work.join("lookup.go");
        std::fs::write(&src, GO_LOOKUP).expect("write");
        let bin = d.work.join("golookup");
        let built = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(&src)
            .env("CGO_ENABLED", "0")
            .output()
            .expect("go build");
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let bin = bin.to_str().expect("utf-8 path");
        let out = d.stdout(pod, &[bin, "springboot-app-svc"]);
        assert_eq!(out.trim(), WEB_IP);
        let out = d.stdout(pod, &[bin, "cart.shop"]);
        assert_eq!(out.trim(), CART_IP);
    } else {
        eprintln!("go not installed: Go resolver step skipped");
    }

    // Java's InetAddress (single-file source launch).
    if on_path("java") {
        let src = d.work.join("Lookup.java");
        std::fs::write(&src, JAVA_LOOKUP).expect("write");
        let src = src.to_str().expect("utf-8 path");
        let out = d.stdout(pod, &["java", src, "springboot-app-svc"]);
        assert_eq!(out.trim(), WEB_IP);
        let out = d.stdout(pod, &["java", src, "db.shop.svc.cluster.local"]);
        assert_eq!(out.trim(), UPSTREAM_ANSWER);
    } else {
        eprintln!("java not installed: Java resolver step skipped");
    }

    // A process outside the managed cgroups (same network namespace) is left alone: its queries
    // reach the responder from its own address, and a Service name does not resolve.
    let outside = c.node.outside();
    let out = d.run(outside, &["getent", "hosts", "springboot-app-svc"]);
    assert_eq!(out.status.code(), Some(2), "not found outside: {out:?}");
    assert!(d.responder_saw(&format!(
        "udp {} springboot-app-svc.default.svc.cluster.local 1",
        outside.ip()
    )));

    // The kernel counted the steering, the agent its answers.
    let status = c.status();
    assert!(counter(&status, "dns_steered") > 0, "{status:#}");
    let steered = meshpath_tests::agent::service(&status, "meshpath/dns-proxy")
        .unwrap_or_else(|| panic!("resolver entry in status: {status:#}"));
    assert_eq!(steered["frontend"], format!("{RESOLVER}:53"), "{status:#}");
    let m = d.metrics();
    assert!(
        metric(&m, "meshpath_dns_queries_answered_total") >= 10,
        "{m}"
    );
    assert!(
        metric(&m, "meshpath_dns_queries_forwarded_total") >= 2,
        "{m}"
    );
    assert!(metric(&m, "meshpath_dns_nxdomain_total") >= 1, "{m}");
}

#[test]
fn dns_capture_off_leaves_port_53_alone() {
    let Some(d) = start("false") else { return };
    let c = &d.cluster;
    let pod = c.node.pod(0);
    c.wait_log(&["DNS capture off"], Duration::from_secs(10));
    // The Service is programmed (its ClusterIP translates) but its name is only what the
    // resolver says: nothing.
    c.wait_status("service programmed", Duration::from_secs(10), |s| {
        meshpath_tests::agent::service(s, "default/springboot-app-svc").is_some()
    });
    let out = d.run(pod, &["getent", "hosts", "springboot-app-svc"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(d.responder_saw(&format!(
        "udp {} springboot-app-svc.default.svc.cluster.local 1",
        pod.ip()
    )));
    let status = c.status();
    assert_eq!(counter(&status, "dns_steered"), 0, "{status:#}");
    assert!(!c.agent.log().contains("DNS listener open"));
}

/// An agent inside the managed cgroups has its own relayed queries steered back to it: it still
/// answers Service names, and refuses (SERVFAIL) a relay that came back instead of looping.
#[test]
fn an_agent_inside_the_managed_cgroups_does_not_relay_in_a_circle() {
    let Some(d) = start_with("true", true) else {
        return;
    };
    let c = &d.cluster;
    let pod = c.node.pod(0);
    c.wait_log(&["DNS listener open"], Duration::from_secs(10));
    wait_for("the Services are served", Duration::from_secs(10), || {
        d.stdout(pod, &["getent", "hosts", "springboot-app-svc"])
            .starts_with(WEB_IP)
    });
    let query = d.work.join("query.py");
    let query = query.to_str().expect("utf-8 path");
    let started = Instant::now();
    let out = d.stdout(
        pod,
        &["python3", query, "udp", RESOLVER, "www.example.test"],
    );
    assert!(out.contains("rcode 2"), "SERVFAIL: {out}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(c
        .agent
        .log()
        .contains("a relayed DNS query came back to the agent"));
    assert!(!read(&d.responder_log).contains("www.example.test"));
}
