//! The lean per-kernel smoke set `cargo xtask vm-test --smoke` runs on older kernels under qemu
//! (software emulation, so few connections): every program type meshpath attaches is loaded,
//! attached and carries one small piece of real traffic. Each test names the programs it proves.
//! The deeper behaviour of each path is covered by the other test files on the host kernel.

use std::time::Duration;

use meshpath_tests::agent::counter;
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{addr, skip_unless, Cluster, AGENT};

/// Generous: under emulation one status round trip takes far longer than on hardware.
const WAIT: Duration = Duration::from_secs(60);

fn programmed(c: &Cluster, svc: &str) {
    c.wait_status(&format!("{svc} programmed"), WAIT, |s| {
        meshpath_tests::agent::service(s, svc).is_some()
    });
}

#[test]
fn cgroup_connect4_and_getpeername4_translate_tcp_to_a_backend() {
    skip_unless!(AGENT);
    let c = Cluster::start(2, &[], &[]);
    c.node
        .spawn_server(1, "web-1", &[8080], &[], &[])
        .expect("server");
    let ep = Ep::ready(c.node.pod(1).ip());
    c.write(
        "web.yaml",
        &docs(&[
            service("web", "10.96.0.10", 80, "8080", "TCP", ""),
            endpoint_slice("web", 8080, "TCP", &[ep]),
        ]),
    );
    programmed(&c, "default/web:");
    let r = c
        .node
        .tcp(0, addr("10.96.0.10", 80), 5)
        .expect("tcp client");
    assert_eq!(
        r.count("web-1"),
        5,
        "connect4 did not reach the backend: {r:?}"
    );
    assert_eq!(
        r.first_peer.as_deref(),
        Some("10.96.0.10:80"),
        "getpeername4 must show the ClusterIP"
    );
    let s = c.status();
    assert!(counter(&s, "connect_translated") >= 5, "{s:#}");
    assert!(counter(&s, "getpeername_reversed") >= 1, "{s:#}");
}

#[test]
fn cgroup_sendmsg4_and_recvmsg4_translate_unconnected_udp() {
    skip_unless!(AGENT);
    let c = Cluster::start(2, &[], &[]);
    c.node
        .spawn_server(1, "dns-1", &[], &[5353], &[])
        .expect("server");
    let ep = Ep::ready(c.node.pod(1).ip());
    c.write(
        "dns.yaml",
        &docs(&[
            service("dns", "10.96.0.53", 53, "5353", "UDP", ""),
            endpoint_slice("dns", 5353, "UDP", &[ep]),
        ]),
    );
    programmed(&c, "default/dns:");
    let r = c
        .node
        .udp_unconnected(0, addr("10.96.0.53", 53), 5)
        .expect("udp client");
    assert_eq!(
        r.count("dns-1"),
        5,
        "sendmsg4 did not reach the backend: {r:?}"
    );
    assert_eq!(
        r.sources.keys().collect::<Vec<_>>(),
        vec!["10.96.0.53:53"],
        "recvmsg4 must show the ClusterIP as the source: {r:?}"
    );
    let s = c.status();
    assert!(counter(&s, "recvmsg_reversed") >= 5, "{s:#}");
}

#[test]
fn sock_ops_and_sk_msg_redirect_a_connection_byte_exact() {
    skip_unless!(AGENT);
    let c = Cluster::start(2, &[], &["--socket-redirect", "true"]);
    c.node.spawn_xfer_server(1, 9000).expect("xfer server");
    let target = format!("{}:9000", c.node.pod(1).ip());
    let kib64 = (64 * 1024).to_string();
    let r = c
        .node
        .run_client(
            0,
            &[
                "xfer",
                "--addr",
                &target,
                "--mode",
                "sink",
                "--bytes",
                &kib64,
                "--reply-bytes",
                &kib64,
            ],
        )
        .expect("xfer client");
    assert_eq!(
        r["ok"],
        r["conns"],
        "not byte-exact: {r:#}\n{}",
        c.agent.log()
    );
    let s = c.status();
    assert!(
        counter(&s, "sock_inserted") >= 2,
        "sock_ops did not add both sockets: {s:#}"
    );
    assert!(
        counter(&s, "msg_redirected_bytes") >= 2 * 64 * 1024,
        "sk_msg did not redirect both directions: {s:#}"
    );
    assert_eq!(counter(&s, "msg_fallback_no_peer"), 0, "{s:#}");
}

const VS: &str = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
";

#[test]
fn l7_rules_steer_the_service_to_the_node_proxy() {
    skip_unless!(AGENT);
    let c = Cluster::with_proxy(3, |_| vec![]);
    let mut parts = vec![
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: reviews\nspec:\n  clusterIP: 10.96.0.30\n  ports:\n  - name: http\n    port: 9080\n  selector:\n    app: reviews\n".to_string(),
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n".to_string(),
    ];
    let mut eps = String::new();
    for (i, v) in [(1, "v1"), (2, "v2")] {
        let name = format!("reviews-{v}");
        c.node
            .spawn_server(i, &name, &[], &[], &[9080])
            .expect("server");
        let ip = c.node.pod(i).ip();
        parts.push(format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: reviews\n    version: {v}\nspec:\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: {ip}\n"));
        eps.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  targetRef: {{kind: Pod, name: {name}}}\n"
        ));
    }
    parts.push(format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: reviews-1\n  labels:\n    kubernetes.io/service-name: reviews\naddressType: IPv4\nports:\n- name: http\n  port: 9080\nendpoints:\n{eps}"));
    c.write("reviews.yaml", &docs(&parts));
    c.write("reviews-vs.yaml", VS);
    c.wait_status("reviews steered to the proxy", WAIT, |s| {
        meshpath_tests::agent::steered_to_proxy(s, "default/reviews:")
    });
    let r = c
        .node
        .run_client(
            0,
            &[
                "http",
                "--addr",
                "10.96.0.30:9080",
                "--count",
                "5",
                "--header",
                "end-user: jason",
            ],
        )
        .expect("http client");
    let r: meshpath_tests::ClientReport = serde_json::from_value(r).expect("report");
    assert_eq!(r.count("reviews-v2"), 5, "{r:?}\n{}", c.agent.log());
    let plain = c
        .node
        .http(0, addr("10.96.0.30", 9080), 5)
        .expect("http client");
    assert_eq!(plain.count("reviews-v1"), 5, "{plain:?}");
}
