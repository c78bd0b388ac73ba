use super::*;

/// The least an agent command line needs.
const AGENT_ARGS: [&str; 6] = [
    "meshpath",
    "agent",
    "--manifests",
    "/m",
    "--cgroup",
    "/sys/fs/cgroup/unified/x",
];

fn agent(extra: &[&str]) -> AgentConfig {
    let mut args = AGENT_ARGS.to_vec();
    args.extend_from_slice(extra);
    match parse_args(args).expect("parses").command {
        Command::Agent(a) => AgentConfig::from(&*a),
        other => panic!("not agent: {other:?}"),
    }
}

#[test]
fn defaults() {
    let c = agent(&[]);
    assert_eq!(c.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
    assert_eq!(
        c.features,
        Features {
            connect_lb: true,
            udp_datagram_lb: true,
            socket_redirect: meshpath_datapath::RedirectScope::OptIn,
            connection_limits: true,
            tcp_metrics: true,
            tcp_metrics_sample_ms: 5_000,
            udp_sticky_timeout_sec: 120,
            conn_limit_sock_release: true,
            tcp_getpeername: true,
            bpf_log: false,
            capacity: meshpath_datapath::MapCapacity::default(),
        }
    );
    assert_eq!(c.compile.default_lb_policy, LbPolicy::Random);
    assert_eq!(c.compile.service_cidr, (Ipv4Addr::new(10, 96, 0, 0), 12));
}

#[test]
fn sources() {
    assert_eq!(
        agent(&[]).source,
        SourceConfig::Manifests(PathBuf::from("/m"))
    );
    let args = [
        "meshpath",
        "agent",
        "--source",
        "kube",
        "--kubeconfig",
        "/k",
        "--node-name",
        "n1",
        "--cgroup",
        "/c",
    ];
    let Command::Agent(a) = parse_args(args).expect("parses").command else {
        panic!("not agent")
    };
    let c = AgentConfig::from(&*a);
    assert_eq!(
        c.source,
        SourceConfig::Kube(meshpath_source::kube::KubeOptions {
            kubeconfig: Some(PathBuf::from("/k")),
            debounce: std::time::Duration::from_millis(DEFAULT_KUBE_DEBOUNCE_MS),
        })
    );
    assert_eq!(c.node_name.as_deref(), Some("n1"));
    let err = parse_args(["meshpath", "agent", "--cgroup", "/c"]).unwrap_err();
    assert!(err.to_string().contains("--manifests"), "{err}");
}

#[test]
fn off_switches_and_policy() {
    let c = agent(&[
        "--connect-lb",
        "false",
        "--udp-datagram-lb=false",
        "--socket-redirect",
        "true",
        "--connection-limits=false",
        "--udp-sticky-timeout",
        "0",
        "--conn-limit-sock-release=false",
        "--tcp-getpeername=false",
        "--default-lb-policy",
        "round-robin",
    ]);
    assert_eq!(
        c.features,
        Features {
            connect_lb: false,
            udp_datagram_lb: false,
            socket_redirect: meshpath_datapath::RedirectScope::All,
            connection_limits: false,
            tcp_metrics: true,
            tcp_metrics_sample_ms: 5_000,
            udp_sticky_timeout_sec: 0,
            conn_limit_sock_release: false,
            tcp_getpeername: false,
            bpf_log: false,
            capacity: meshpath_datapath::MapCapacity::default(),
        }
    );
    assert_eq!(c.compile.default_lb_policy, LbPolicy::RoundRobin);
}

#[test]
fn proxy_settings() {
    assert_eq!(agent(&[]).proxy, None);
    let c = agent(&["--proxy-ip", "10.244.0.1", "--proxy-ports", "20000-20010"]);
    assert_eq!(
        c.proxy,
        Some(ProxyConfig {
            ip: Ipv4Addr::new(10, 244, 0, 1),
            netns: None,
            ports: (20000, 20010),
            http_no_endpoint_503: true,
            own_http1: true,
            fail_closed: meshpath_compile::steer::FailClosed::None,
            drain_timeout: std::time::Duration::from_millis(3000),
        })
    );
    let off = agent(&[
        "--proxy-ip",
        "10.244.0.1",
        "--http-no-endpoint-503",
        "false",
    ]);
    assert!(!off.proxy.unwrap().http_no_endpoint_503);
    let hyper_only = agent(&["--proxy-ip", "10.244.0.1", "--proxy-own-http1", "false"]);
    assert!(!hyper_only.proxy.unwrap().own_http1);
    assert!(parse_port_range("9-1")
        .unwrap_err()
        .contains("FIRST <= LAST"));
}

#[test]
fn cidr_errors_say_what_is_wrong() {
    assert!(parse_cidr("10.96.0.0")
        .unwrap_err()
        .contains("ADDRESS/PREFIX"));
    assert!(parse_cidr("10.96.0.300/12")
        .unwrap_err()
        .contains("address"));
    assert!(parse_cidr("10.96.0.0/2")
        .unwrap_err()
        .contains("between 8 and 30"));
}

#[test]
fn redirect_switch_parses() {
    match parse_args(["meshpath", "redirect", "off", "--pin-dir", "/sys/fs/bpf/x"])
        .expect("parses")
        .command
    {
        Command::Redirect(r) => assert_eq!(
            (r.state, r.pin.pin_dir),
            (OnOff::Off, PathBuf::from("/sys/fs/bpf/x"))
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn validate_takes_files_and_directories() {
    match parse_args(["meshpath", "validate", "a.yaml", "manifests/"])
        .expect("parses")
        .command
    {
        Command::Validate(v) => assert_eq!(
            v.paths,
            [PathBuf::from("a.yaml"), PathBuf::from("manifests/")]
        ),
        other => panic!("{other:?}"),
    }
    assert!(parse_args(["meshpath", "validate"]).is_err());
}

#[test]
fn cgroup_is_required() {
    assert!(parse_args(["meshpath", "agent", "--manifests", "/m"]).is_err());
}

#[test]
fn dns_capture_is_on_with_manifests_and_opt_in_with_kube() {
    let proxy = ["--proxy-ip", "10.244.0.1"];
    let dns = agent(&proxy).dns.expect("on by default with manifests");
    assert_eq!(dns.ip, Ipv4Addr::new(10, 244, 0, 1));
    assert_eq!(dns.cluster_domain, "cluster.local");
    assert_eq!(dns.ports, (15053, 15099));
    assert!(dns.upstreams.is_empty(), "resolv.conf decides at start");
    assert_eq!(agent(&[]).dns, None, "no address to listen on");
    assert_eq!(
        agent(&[&proxy[..], &["--dns-capture", "false"]].concat()).dns,
        None
    );
    let kube = |extra: &[&str]| {
        let mut args = vec![
            "meshpath",
            "agent",
            "--source",
            "kube",
            "--cgroup",
            "/sys/fs/cgroup/x",
        ];
        args.extend(extra);
        match parse_args(args).expect("parses").command {
            Command::Agent(a) => AgentConfig::from(&*a),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(kube(&proxy).dns, None, "opt-in with kube");
    let c = kube(&[
        "--proxy-ip",
        "10.244.0.1",
        "--dns-capture",
        "true",
        "--dns-upstream",
        "10.96.0.10,192.0.2.1:5353",
        "--cluster-domain",
        "Corp.Internal.",
    ]);
    let dns = c.dns.expect("on");
    assert_eq!(
        dns.upstreams,
        vec![
            "10.96.0.10:53".parse().expect("addr"),
            "192.0.2.1:5353".parse().expect("addr")
        ]
    );
    assert_eq!(dns.cluster_domain, "corp.internal");
    assert!(kube(&["--dns-capture", "true"]).dns_without_proxy);
    assert!(parse_resolver("nope").unwrap_err().contains("nope"));
}

#[test]
fn tracing() {
    let c = agent(&[]);
    assert_eq!(
        c.trace,
        TraceConfig {
            sampling_hundredths: 100,
            collector: None,
            format: TraceFormatArg::Zipkin,
            mesh_id: "cluster.local".into(),
        }
    );
    let c = agent(&[
        "--trace-sampling",
        "12.5",
        "--trace-collector",
        "http://127.0.0.1:9411",
        "--trace-format",
        "otlp",
    ]);
    assert_eq!(c.trace.sampling_hundredths, 1250);
    assert_eq!(c.trace.collector.as_deref(), Some("http://127.0.0.1:9411"));
    assert_eq!(c.trace.format, TraceFormatArg::Otlp);
    assert!(parse_percent("101").is_err());
    assert!(parse_percent("x").is_err());
}

#[test]
fn socket_redirect_scopes() {
    use meshpath_datapath::RedirectScope;
    for (arg, want) in [
        ("off", RedirectScope::Off),
        ("false", RedirectScope::Off),
        ("opt-in", RedirectScope::OptIn),
        ("all", RedirectScope::All),
        ("true", RedirectScope::All),
    ] {
        assert_eq!(
            agent(&["--socket-redirect", arg]).features.socket_redirect,
            want,
            "{arg}"
        );
    }
}

#[test]
fn worker_threads_flag() {
    assert_eq!(agent(&[]).worker_threads, None);
    assert_eq!(
        agent(&["--worker-threads", "3"]).worker_threads,
        Some(3usize)
    );
    let zero = parse_args([
        "meshpath",
        "agent",
        "--manifests",
        "/m",
        "--cgroup",
        "/x",
        "--worker-threads",
        "0",
    ]);
    assert!(zero.is_err(), "0 workers is refused");
}

#[test]
fn uninstall_cleanup_needs_the_kube_source_and_the_pod() {
    let kube = ["--source", "kube", "--node-name", "n1"];
    let pod = [
        "--pod-name",
        "meshpath-x",
        "--pod-namespace",
        "meshpath-system",
    ];
    let with_pod = agent(&[&kube[..], &pod[..]].concat());
    assert_eq!(
        with_pod.uninstall_cleanup,
        Some(meshpath_source::kube::lifecycle::PodRef {
            namespace: "meshpath-system".into(),
            name: "meshpath-x".into(),
        })
    );
    assert_eq!(agent(&kube).uninstall_cleanup, None);
    let off = agent(&[&kube[..], &pod[..], &["--uninstall-cleanup", "false"]].concat());
    assert_eq!(off.uninstall_cleanup, None);
    // The manifests source has no DaemonSet to ask about.
    assert_eq!(agent(&pod).uninstall_cleanup, None);
    let half = parse_args([
        "meshpath",
        "agent",
        "--manifests",
        "/m",
        "--cgroup",
        "/c",
        "--pod-name",
        "p",
    ]);
    assert!(half.is_err(), "--pod-name without --pod-namespace");
}

#[test]
fn map_capacities_size_the_kernel_maps_and_the_id_spaces() {
    let c = agent(&[
        "--max-frontends",
        "65536",
        "--max-backends",
        "524288",
        "--max-service-entries",
        "1048576",
    ]);
    let capacity = meshpath_datapath::MapCapacity {
        frontends: 65_536,
        backends: 524_288,
        service_entries: 1_048_576,
    };
    assert_eq!(c.features.capacity, capacity);
    assert_eq!(
        (c.compile.max_frontends, c.compile.max_backends),
        (65_536, 524_288)
    );
    let with = |n: &'static str| parse_args(AGENT_ARGS.into_iter().chain(["--max-frontends", n]));
    assert!(with("2").is_ok());
    let err = with("1").expect_err("id 0 is none: one frontend needs 2");
    assert!(err.to_string().contains("max-frontends"), "{err}");
}
