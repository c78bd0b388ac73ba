//! `--cgroup auto` against real cgroups: inside the test node's cgroup the test lays out what a
//! kubelet with the systemd driver creates (`kubepods.slice` with its QoS slices and a pod
//! slice named after the pod's UID), points `--cgroup-mount` at it, and checks that the agent
//! attaches at `kubepods.slice`: a client in the pod slice is balanced, the same client in a
//! cgroup outside kubepods is not.

use std::path::Path;

use meshpath_tests::agent::Agent;
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{skip_unless, ClientReport, Node, AGENT};

const VIP: &str = "10.96.0.90";
const UID: &str = "5a1c3e2b-0d4f-4b6a-9e8d-7c6b5a4f3e2d";

fn tcp_from(node: &Node, pod: &meshpath_tests::Pod, n: u32) -> ClientReport {
    let addr = format!("{VIP}:80");
    let n = n.to_string();
    let args = ["tcp", "--addr", &addr, "--count", &n, "--timeout-ms", "300"];
    serde_json::from_value(node.run_client_in(pod, &args).expect("tcp client")).expect("report")
}

#[test]
fn auto_attaches_at_the_kubepods_root_and_covers_pod_cgroups_below_it() {
    skip_unless!(AGENT);
    let node = Node::new(2).expect("node");
    node.spawn_server(1, "web-1", &[8080], &[], &[])
        .expect("server");
    // The node's cgroup stands in for the cgroup2 mount. The pod slice's name is the kubelet's
    // (systemd driver, BestEffort QoS): the UID's dashes become underscores.
    let mount = node.cgroup_path();
    let kubepods = mount.join("kubepods.slice");
    let besteffort = kubepods.join("kubepods-besteffort.slice");
    let pod_slice = besteffort.join(format!(
        "kubepods-besteffort-pod{}.slice",
        UID.replace('-', "_")
    ));
    for dir in [&kubepods.join("kubepods-burstable.slice"), &pod_slice] {
        std::fs::create_dir_all(dir).expect("creating kubelet-style cgroups");
    }

    let ip = node.pod(1).ip();
    let yaml = docs(&[
        service("web", VIP, 80, "8080", "TCP", ""),
        endpoint_slice("web", 8080, "TCP", &[Ep::ready(ip)]),
    ]);
    let dir = node
        .write_manifests(&[("web.yaml", yaml)])
        .expect("manifests");
    let mount_arg = mount.display().to_string();
    let agent = Agent::start(
        &dir,
        Path::new("auto"),
        node.pin_dir(),
        &node.work_dir().join("agent.log"),
        &["--cgroup-mount", &mount_arg],
    )
    .expect("agent with --cgroup auto");
    let log = agent.log();
    assert!(
        log.contains("kubelet's kubepods cgroup found")
            && log.contains(&format!("cgroup={}", kubepods.display())),
        "{log}"
    );

    // Pod 0's network namespace, once in the pod slice (below the attach point) and once in its
    // own cgroup beside kubepods.
    let in_pod = node.pod(0).in_cgroup("kubepod", pod_slice.clone());
    let r = tcp_from(&node, &in_pod, 10);
    assert_eq!(r.count("web-1"), 10, "{r:?}\n{log}");
    let outside = tcp_from(&node, node.pod(0), 3);
    assert_eq!(
        outside.ok(),
        0,
        "not below kubepods, not balanced: {outside:?}"
    );
}
