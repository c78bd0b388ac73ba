//! Connect-time load balancing against the real kernel: a pod's connect() to ClusterIP:port is
//! rewritten in the kernel to a ready backend; getpeername() still shows the ClusterIP; no ready
//! backend refuses at once; sockets outside the managed cgroup are left alone.

use meshpath_tests::agent::{counter, svc};
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::Target;
use meshpath_tests::{addr, skip_unless, Cluster, AGENT};

const VIP: &str = "10.96.0.10";

/// Pods 1..=3 run `web-1..3` (TCP 8080, UDP 5353); pod 0 is the client.
fn three_backends(node: &meshpath_tests::Node) {
    for i in 1..=3 {
        node.spawn_server(i, &format!("web-{i}"), &[8080], &[5353], &[])
            .expect("server");
    }
}

fn web_manifest(ips: &[std::net::Ipv4Addr]) -> String {
    let eps: Vec<Ep> = ips.iter().map(|ip| Ep::ready(*ip)).collect();
    docs(&[
        service("web", VIP, 80, "8080", "TCP", ""),
        endpoint_slice("web", 8080, "TCP", &eps),
        service("dns", "10.96.0.53", 53, "5353", "UDP", ""),
        endpoint_slice("dns", 5353, "UDP", &eps),
    ])
}

fn cluster() -> Cluster {
    cluster_with(&[])
}

fn cluster_with(agent_args: &[&str]) -> Cluster {
    let c = Cluster::start(4, &[], agent_args);
    three_backends(&c.node);
    let ips: Vec<_> = (1..=3).map(|i| c.node.pod(i).ip()).collect();
    c.write("web.yaml", &web_manifest(&ips));
    c.wait_status(
        "web and dns programmed",
        std::time::Duration::from_secs(5),
        |s| meshpath_tests::agent::service(s, "default/dns:").is_some(),
    );
    c
}

#[test]
fn tcp_connect_to_cluster_ip_reaches_a_backend_and_getpeername_shows_the_cluster_ip() {
    skip_unless!(AGENT);
    let c = cluster();
    let r = c.node.tcp(0, addr(VIP, 80), 30).expect("tcp client");
    assert_eq!(r.ok(), 30, "{r:?}");
    assert!(r.counts.keys().all(|n| n.starts_with("web-")), "{r:?}");
    assert_eq!(
        r.first_peer.as_deref(),
        Some("10.96.0.10:80"),
        "getpeername must show the ClusterIP"
    );

    let s = c.status();
    assert_eq!(svc(&s, "default/web:")["connects"], 30);
    assert!(counter(&s, "connect_translated") >= 30);
    assert!(counter(&s, "getpeername_reversed") >= 1);
}

/// `--tcp-getpeername false`: TCP sockets see the backend they reached (with the TCP metrics on,
/// which still give the socket its storage, and off, which leave it none); connected UDP keeps
/// its reversal.
#[test]
fn tcp_getpeername_off_shows_the_backend_and_keeps_udp_reversal() {
    skip_unless!(AGENT);
    for metrics in ["true", "false"] {
        let c = cluster_with(&["--tcp-getpeername", "false", "--tcp-metrics", metrics]);
        let backends: Vec<String> = (1..=3)
            .map(|i| format!("{}:8080", c.node.pod(i).ip()))
            .collect();
        let r = c.node.tcp(0, addr(VIP, 80), 10).expect("tcp client");
        assert_eq!(r.ok(), 10, "{r:?}");
        let peer = r.first_peer.clone().unwrap_or_default();
        assert!(
            backends.contains(&peer),
            "metrics {metrics}: getpeername showed {peer:?}, not one of {backends:?}"
        );
        let u = c
            .node
            .udp_connected(0, addr("10.96.0.53", 53), 5)
            .expect("udp client");
        assert_eq!(u.ok(), 5, "{u:?}");
        assert_eq!(u.first_peer.as_deref(), Some("10.96.0.53:53"));
        let s = c.status();
        assert!(counter(&s, "connect_translated") >= 10);
    }
}

#[test]
fn connected_udp_is_translated_and_getpeername_shows_the_cluster_ip() {
    skip_unless!(AGENT);
    let c = cluster();
    let r = c
        .node
        .udp_connected(0, addr("10.96.0.53", 53), 30)
        .expect("udp client");
    assert_eq!(r.ok(), 30, "{r:?}");
    assert!(r.counts.keys().all(|n| n.starts_with("web-")), "{r:?}");
    assert_eq!(r.first_peer.as_deref(), Some("10.96.0.53:53"));
}

#[test]
fn unconnected_udp_is_translated_per_datagram_and_replies_come_from_the_cluster_ip() {
    skip_unless!(AGENT);
    // Per-socket stickiness off (`udp_sticky.rs` has it on): every datagram is balanced anew.
    let c = cluster_with(&["--udp-sticky-timeout", "0"]);
    let r = c
        .node
        .udp_unconnected(0, addr("10.96.0.53", 53), 30)
        .expect("udp client");
    assert_eq!(r.ok(), 30, "{r:?}");
    assert_eq!(
        r.sources.keys().collect::<Vec<_>>(),
        vec!["10.96.0.53:53"],
        "recvfrom must show the ClusterIP: {r:?}"
    );
    // Random per datagram: 30 datagrams over 3 backends all landing on one has p = 3·(1/3)^30.
    assert!(r.counts.len() > 1, "datagrams should spread: {r:?}");
    let s = c.status();
    assert_eq!(svc(&s, "default/dns:")["datagrams"], 30);
    assert!(counter(&s, "recvmsg_reversed") >= 30);
}

#[test]
fn no_ready_endpoint_refuses_at_once() {
    skip_unless!(AGENT);
    let c = Cluster::start(2, &[], &[]);
    c.node
        .spawn_server(1, "web-1", &[8080], &[], &[])
        .expect("server");
    let ip = c.node.pod(1).ip();
    c.write(
        "empty.yaml",
        &docs(&[
            service("empty", "10.96.1.1", 80, "8080", "TCP", ""),
            endpoint_slice("empty", 8080, "TCP", &[]),
            service("unready", "10.96.1.2", 80, "8080", "TCP", ""),
            endpoint_slice("unready", 8080, "TCP", &[Ep::not_ready(ip)]),
            service("noslice", "10.96.1.3", 80, "8080", "TCP", ""),
        ]),
    );
    c.wait_status("three services", std::time::Duration::from_secs(5), |s| {
        s["services"].as_array().is_some_and(|a| a.len() == 3)
    });
    for vip in ["10.96.1.1", "10.96.1.2", "10.96.1.3"] {
        let r = c.node.tcp(0, addr(vip, 80), 20).expect("tcp client");
        assert_eq!(r.errors.get("ECONNREFUSED"), Some(&20), "{vip}: {r:?}");
        // Refused by the program itself, not after a SYN went unanswered (the kernel's first
        // retransmission alone waits 1 s); the bound leaves room for a loaded 2-core machine
        // preempting the client between its clock reads.
        let max = r.max_connect_us.expect("connect durations");
        assert!(
            max < 200_000,
            "{vip}: slowest refused connect took {max} µs (limit 200 ms, a SYN retry takes 1 s)"
        );
    }
    let s = c.status();
    assert!(counter(&s, "no_backend") >= 60);
    assert_eq!(svc(&s, "default/noslice:")["no_backend"], 20);
}

#[test]
fn sockets_outside_the_managed_cgroup_are_not_translated() {
    skip_unless!(AGENT);
    let c = cluster();
    let before = counter(&c.status(), "connect_translated");
    // Same network namespace as pod 0, but the unmanaged cgroup: the ClusterIP is just an
    // unroutable address there, so the connect must fail instead of reaching a backend.
    let r = c
        .node
        .run_client(
            Target::Outside,
            &[
                "tcp",
                "--addr",
                "10.96.0.10:80",
                "--count",
                "3",
                "--timeout-ms",
                "300",
            ],
        )
        .expect("tcp client");
    let r: meshpath_tests::ClientReport = serde_json::from_value(r).expect("report");
    assert_eq!(r.ok(), 0, "an unmanaged socket reached a backend: {r:?}");
    assert_eq!(r.failed(), 3, "{r:?}");
    assert_eq!(counter(&c.status(), "connect_translated"), before);
    // And it can still talk to pods directly.
    let direct = c
        .node
        .tcp(
            Target::Outside,
            std::net::SocketAddr::new(c.node.pod(1).ip().into(), 8080),
            1,
        )
        .expect("direct");
    assert_eq!(direct.count("web-1"), 1, "{direct:?}");
}

#[test]
fn dual_stack_sockets_reaching_an_ipv4_cluster_ip_are_translated_too() {
    skip_unless!(AGENT);
    // Java and other runtimes open AF_INET6 sockets by default and reach IPv4 services through
    // v4-mapped addresses (connect6). (The test clients' UDP sockets are AF_INET only, so the
    // sendmsg6/recvmsg6 path is not exercised here.)
    let c = cluster();
    let tcp: std::net::SocketAddr = "[::ffff:10.96.0.10]:80".parse().expect("addr");
    let r = c.node.tcp(0, tcp, 30).expect("tcp client");
    assert_eq!(r.ok(), 30, "{r:?}");
    assert_eq!(r.first_peer.as_deref(), Some("[::ffff:10.96.0.10]:80"));
    assert_eq!(svc(&c.status(), "default/web:")["connects"], 30);
}
