//! DNS capture with `--source kube` (opt-in there) against a real kube-apiserver: the pods'
//! resolver is kube-dns's ClusterIP, as in a cluster. The agent answers Service names from the API
//! and relays the rest to kube-dns's endpoint (a responder this test runs in pod 1's namespace),
//! not to the ClusterIP, which the agent's own sockets could not reach without kube-proxy.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use meshpath_tests::agent;
use meshpath_tests::kube::KubeCluster;
use meshpath_tests::{skip_unless, Node, Pod, Proxy, Source, KUBE_AGENT, PROXY_IP};

const KUBE_DNS_VIP: &str = "10.96.0.10";
const WEB_VIP: &str = "10.96.0.80";
/// Where the agent's relayed queries come from: the pods' gateway, in the node namespace.
const GATEWAY: &str = PROXY_IP;
const UPSTREAM_ANSWER: &str = "192.0.2.99";

const RESPONDER: &str = include_str!("dns/responder.py");

fn objects(responder_ip: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
spec:
  clusterIP: {KUBE_DNS_VIP}
  ports:
  - name: dns
    port: 53
    protocol: UDP
  - name: dns-tcp
    port: 53
    protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-1
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
addressType: IPv4
ports:
- name: dns
  port: 53
  protocol: UDP
- name: dns-tcp
  port: 53
  protocol: TCP
endpoints:
- addresses: [\"{responder_ip}\"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: {WEB_VIP}
  ports:
  - port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: db
spec:
  type: ExternalName
  externalName: db.example.test
"
    )
}

fn run(pod: &Pod, resolv_conf: &Path, args: &[&str]) -> Output {
    let mut cmd = pod.command("timeout").expect("pod command");
    cmd.args(["30", "unshare", "-m", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
        .arg(resolv_conf)
        .args(args)
        .stdin(Stdio::null());
    let out = cmd.output().expect("running a pod client");
    eprintln!(
        "{args:?}: {} {:?} {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn getent(pod: &Pod, resolv_conf: &Path, name: &str) -> String {
    String::from_utf8_lossy(&run(pod, resolv_conf, &["getent", "hosts", name]).stdout).into_owned()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kube_dns_queries_are_answered_or_relayed_to_its_endpoints_when_opted_in() {
    skip_unless!(KUBE_AGENT);
    let node = Node::new(2).expect("node");
    let work = node.work_dir().to_path_buf();
    let responder_ip = node.pod(1).ip().to_string();
    std::fs::write(work.join("responder.py"), RESPONDER).expect("write");
    let resolv_conf = work.join("resolv.conf");
    std::fs::write(
        &resolv_conf,
        format!("nameserver {KUBE_DNS_VIP}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:2 attempts:2\n"),
    )
    .expect("write");
    let responder_log = work.join("responder.log");
    let child = Command::new("ip")
        .args(["netns", "exec", node.pod(1).netns_name(), "python3"])
        .arg(work.join("responder.py"))
        .args([responder_ip.as_str(), "53"])
        .arg(&responder_log)
        .arg(UPSTREAM_ANSWER)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the responder");
    node.adopt("responder", child);
    let log = || std::fs::read_to_string(&responder_log).unwrap_or_default();
    wait_for("responder ready", Duration::from_secs(10), || {
        log().contains("ready")
    });

    let kube = KubeCluster::start().expect("kube cluster");
    kube.apply_yaml(&objects(&responder_ip)).expect("apply");
    let a = node
        .start_agent(
            Source::Kube {
                cluster: &kube,
                node_name: "node-a",
            },
            Proxy::On,
            &["--dns-capture", "true"],
        )
        .expect("agent");
    wait_for("kube-dns steered", Duration::from_secs(20), || {
        a.status().is_ok_and(|s| {
            s["services"].as_array().is_some_and(|v| {
                v.iter().any(|e| {
                    e["name"] == "meshpath/dns-proxy"
                        && e["frontend"] == format!("{KUBE_DNS_VIP}:53")
                })
            })
        })
    });
    let pod = node.pod(0);
    wait_for("web resolves", Duration::from_secs(20), || {
        getent(pod, &resolv_conf, "web").starts_with(WEB_VIP)
    });
    // The search list's misses and other names reach kube-dns's pod, from the agent.
    let out = getent(pod, &resolv_conf, "www.example.test");
    assert!(out.starts_with(UPSTREAM_ANSWER), "{out:?}");
    assert!(
        log().contains(&format!("udp {GATEWAY} www.example.test 1")),
        "{}",
        log()
    );
    let out = getent(pod, &resolv_conf, "db.default.svc.cluster.local");
    assert!(
        out.starts_with(UPSTREAM_ANSWER) && out.contains("db.example.test"),
        "{out:?}"
    );
    let status = a.status().expect("status");
    assert!(
        agent::service(&status, "kube-system/kube-dns").is_none(),
        "kube-dns's frontends are taken over: {status:#}"
    );
}
