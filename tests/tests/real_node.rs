//! meshpath on a real node: `scripts/node.sh up` starts a control plane, containerd + runc and a
//! real kubelet whose pods are containers on a CNI bridge; two pods and a Service are applied with
//! kubectl, and the client pod's request to the Service's ClusterIP must fail before the agent's
//! DaemonSet is deployed (this node has no kube-proxy: nothing else translates ClusterIPs) and
//! succeed once `kubectl apply -f deploy/` has made it Ready; a VirtualService applied with kubectl
//! then routes the Service's requests through the node's L7 proxy to another Service, and
//! deleting it brings the kernel path back. The seed's apps run as containers from
//! examples/seed/artifacts/apps, applied unchanged, and answer through the gateway; the seed's
//! VirtualServices (examples/seed/artifacts/mesh, the seed's 20/80 weights) route them through
//! the node's proxy, and its captcha upload is answered. A rolling update of the DaemonSet under
//! load, on the kernel path and through a VirtualService's route, must fail no request, and the
//! route must be back once the new agent is ready (the requests that took the fallback while no
//! agent ran are counted); `kubectl delete -f deploy/` must leave none of the agent's programs,
//! maps or pins in the kernel.
//!
//! Out of the default suite: a cold run builds kubelet, kube-scheduler, containerd and runc
//! (many minutes on two cores). `MESHPATH_REAL_NODE=1 cargo xtask test real_node` runs it; it is
//! skipped with the reason when the tools cannot be built or the machine lacks what the node needs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshpath_tests::{cgroup2_root, poll, skip_unless, RunId, AGENT};

#[path = "real_node/node.rs"]
mod node;
#[path = "real_node/rollout.rs"]
mod rollout;
#[path = "real_node/seed.rs"]
mod seed;
#[path = "real_node/seed_mesh.rs"]
mod seed_mesh;
#[path = "real_node/uninstall.rs"]
mod uninstall;

use node::{repo, skip, RealNode};

const BODY: &str = "served by a real pod";

/// All of `web`'s HTTP traffic to `web2`: the node's L7 proxy must route it.
const VIRTUAL_SERVICE: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - route:
    - destination: {host: web2}
";

/// Not called `server`: the kubelet gives every pod of the namespace `<SERVICE>_PORT` variables
/// (`enableServiceLinks`), and Spring Boot reads `SERVER_PORT=tcp://...` as its `server.port`,
/// so the seed's springboot-app, applied unchanged beside them, would exit at start.
const PODS: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: meshpath.local/busybox:1
    imagePullPolicy: Never
    command: [/bin/sh, -c, 'echo \"$BODY\" > /www/index.html && exec httpd -f -p 8080 -h /www']
    env: [{name: BODY, value: BODY_VALUE}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web2, labels: {app: web2}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: meshpath.local/busybox:1
    imagePullPolicy: Never
    command: [/bin/sh, -c, 'echo web2 > /www/index.html && exec httpd -f -p 8080 -h /www']
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web2}
spec:
  selector: {app: web2}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: meshpath.local/busybox:1
    imagePullPolicy: Never
    command: [/bin/sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 1; done']
";

#[test]
fn a_pod_reaches_a_service_through_the_daemonset_on_a_real_node() {
    skip_unless!(AGENT);
    if std::env::var("MESHPATH_REAL_NODE").as_deref() != Ok("1") {
        skip(
            "set MESHPATH_REAL_NODE=1 to run (a cold run builds kubelet, containerd and runc: \
             many minutes)",
        );
        return;
    }
    let t0 = Instant::now();
    let bins = Command::new("bash")
        .arg(repo().join("scripts/node-bins.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("running node-bins.sh");
    if !bins.status.success() {
        let err = String::from_utf8_lossy(&bins.stderr);
        let last = err.lines().last().unwrap_or("").to_owned();
        skip(&format!("the node's tools cannot be built here: {last}"));
        return;
    }
    let tools = t0.elapsed();

    let dir = std::env::temp_dir().join(format!("{}-node", RunId::new().base()));
    let node = RealNode {
        kubeconfig: dir.join("kubeconfig"),
        dir,
    };
    let up = node.script("node.sh", &["up"]);
    assert!(
        up.status.success(),
        "node.sh up: {}\n{}",
        up.status,
        String::from_utf8_lossy(&up.stderr)
    );
    let node_up = t0.elapsed() - tools;

    node.apply(&PODS.replace("BODY_VALUE", BODY));
    node.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/web",
        "pod/web2",
        "pod/client",
        "--timeout=120s",
    ]);
    let ips = node.kubectl_ok(&["get", "pods", "-o", "jsonpath={.items[*].status.podIP}"]);
    assert_eq!(ips.split_whitespace().count(), 3, "pod IPs: {ips:?}");
    let cluster_ip = node.kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let url = format!("{cluster_ip}:80");

    // Pod to pod works on the bridge; the ClusterIP does not, as nothing translates it yet.
    let server_ip = node.kubectl_ok(&["get", "pod", "web", "-o", "jsonpath={.status.podIP}"]);
    let direct = node.get(&format!("{server_ip}:8080"));
    assert_eq!(direct.as_deref(), Ok(format!("{BODY}\n").as_str()));
    let before = node.get(&url);
    assert!(
        before.is_err(),
        "{url} answered without meshpath: {before:?}"
    );

    let t_deploy = Instant::now();
    let deploy = node.script("node.sh", &["deploy"]);
    assert!(
        deploy.status.success(),
        "node.sh deploy: {}\n{}",
        deploy.status,
        String::from_utf8_lossy(&deploy.stderr)
    );
    let mut last = before;
    let ok = poll(Duration::from_secs(60), || {
        last = node.get(&url);
        last.as_ref()
            .ok()
            .filter(|b| b.as_str() == format!("{BODY}\n"))
            .cloned()
    });
    assert!(ok.is_some(), "{url} through meshpath: {last:?}");
    let deployed = t_deploy.elapsed();

    // A VirtualService applied with kubectl sends the Service's requests through the node's
    // proxy to web2; deleting it brings the kernel path back.
    let t_vs = Instant::now();
    node.apply(VIRTUAL_SERVICE);
    let routed = poll(Duration::from_secs(60), || {
        last = node.get(&url);
        (last.as_deref() == Ok("web2\n")).then_some(())
    });
    assert!(routed.is_some(), "{url} after the VirtualService: {last:?}");
    node.kubectl_ok(&["delete", "virtualservice", "web"]);
    let back = poll(Duration::from_secs(60), || {
        last = node.get(&url);
        (last.as_deref() == Ok(format!("{BODY}\n").as_str())).then_some(())
    });
    assert!(
        back.is_some(),
        "{url} after deleting the VirtualService: {last:?}"
    );
    let routing = t_vs.elapsed();

    // The agent inside its pod sees the Service in its pinned maps.
    let status = node.kubectl_ok(&[
        "exec",
        "-n",
        "meshpath-system",
        "ds/meshpath",
        "--",
        "meshpath",
        "status",
    ]);
    assert!(
        status.contains(cluster_ip.trim()),
        "meshpath status does not show {cluster_ip}:\n{status}"
    );

    // The seed's apps as containers, applied with kubectl unchanged; a request through the
    // gateway reaches springboot-app and golang-app-data.
    let seed = seed::seed_apps_through_the_gateway(&node);
    eprintln!(
        "real node: seed apps: images built and imported {:?}, Deployments available {:?}, \
         gateway and springboot-app v2 answered {:?}: {:?}; python-app-anticaptcha: {:?}",
        seed.images, seed.ready, seed.answered, seed.gateway_body, seed.python
    );

    // The seed's VirtualServices over its apps, applied with kubectl: every app through the
    // node's proxy, the seed's 20/80 weights, and its captcha upload.
    let mesh = seed_mesh::seed_mesh_routes(&node);
    eprintln!(
        "real node: seed mesh: routes.yaml steered the gateway's requests over v1 and v2 in \
         {:?} (v1, v2 of 40: {:?}); the seed's 20/80 VirtualService: v1, v2 of 100: {:?}; \
         captcha upload through the gateway {:?}, directly {:?}",
        mesh.steered, mesh.balanced, mesh.weighted, mesh.captcha.0, mesh.captcha.1
    );

    // A rolling update of the DaemonSet (another image tag) while the client sends 10 requests a
    // second to web2's ClusterIP (kernel path) and 10 to web's, which the VirtualService steers
    // through the node's proxy to web2: the pinned programs serve while no agent runs; the L7
    // route is counted across the handover from the old agent's proxy to the new one's.
    node.apply(VIRTUAL_SERVICE);
    let routed = poll(Duration::from_secs(60), || {
        last = node.get(&url);
        (last.as_deref() == Ok("web2\n")).then_some(())
    });
    assert!(routed.is_some(), "{url} after the VirtualService: {last:?}");
    let web2_ip = node.kubectl_ok(&["get", "svc", "web2", "-o", "jsonpath={.spec.clusterIP}"]);
    let web2_url = format!("{}:80", web2_ip.trim());
    let loads = [
        rollout::Load {
            name: "kernel",
            addr: &web2_url,
            want: "web2",
        },
        rollout::Load {
            name: "l7",
            addr: &url,
            want: "web2",
        },
    ];
    let rollout = rollout::rolling_update_under_load(&node, &loads, "rollout");
    for (load, counts) in loads.iter().zip(&rollout.loads) {
        eprintln!(
            "real node: rolling update under load ({}, {}): {} requests, {} failed, {} answered \
             without the expected route, rollout {:?}\n{}",
            load.name,
            load.addr,
            counts.total(),
            counts.failed,
            counts.other,
            rollout.rollout,
            counts.log.trim()
        );
    }
    eprintln!(
        "real node: the rolling update's handover:\n{}",
        rollout.timeline
    );
    // No agent runs between the old one's exit and the new one's start: connects to web go
    // straight to its endpoints then (the proxy's fallback) and are answered by web, not web2.
    // None may fail, and none may miss the route once the new agent is ready.
    let [kernel, l7] = &rollout.loads[..] else {
        unreachable!("two loads")
    };
    assert_eq!(
        (kernel.failed, kernel.other),
        (0, 0),
        "kernel-path load: requests failed during the rolling update"
    );
    assert_eq!(
        l7.failed, 0,
        "L7 load: requests failed during the rolling update"
    );
    assert_eq!(
        l7.after_ready, 0,
        "L7 load: requests missed the route after the new agent was ready"
    );
    for (load, counts) in loads.iter().zip(&rollout.loads) {
        assert!(
            counts.ok >= 40,
            "{} load: too few requests to measure: {}",
            load.name,
            counts.ok
        );
    }
    node.kubectl_ok(&["delete", "virtualservice", "web"]);
    let back = poll(Duration::from_secs(60), || {
        last = node.get(&url);
        (last.as_deref() == Ok(format!("{BODY}\n").as_str())).then_some(())
    });
    assert!(
        back.is_some(),
        "{url} after the rollout's VirtualService: {last:?}"
    );

    // `kubectl delete -f deploy/`: the agent sees its DaemonSet go and removes its programs,
    // maps and pins.
    let (pin_dir, bridge) = (node.state("PIN_DIR"), node.state("BRIDGE"));
    let kubepods = cgroup2_root().expect("cgroup v2").join("kubepods");
    let uninstalled =
        uninstall::uninstall_leaves_kernel_clean(&node, &kubepods, Path::new(&pin_dir));
    let gone = node.get(&url);
    assert!(
        gone.is_err(),
        "{url} still answered after the uninstall: {gone:?}"
    );
    eprintln!(
        "real node: tools {tools:?}, node up {node_up:?}, DaemonSet deploy until the Service \
         answers {deployed:?}, VirtualService applied and deleted {routing:?}, rolling update \
         {:?}, kubectl delete -f deploy/ {uninstalled:?}, total {:?}",
        rollout.rollout,
        t0.elapsed()
    );

    // Teardown leaves nothing of the node: processes' cgroups, the bridge.
    assert!(kubepods.is_dir());
    let t_down = Instant::now();
    let down = node.script("node.sh", &["down"]);
    assert!(
        down.status.success(),
        "node.sh down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    eprintln!("real node: down in {:?}", t_down.elapsed());
    assert!(!kubepods.exists(), "{} left", kubepods.display());
    assert!(!Path::new(&pin_dir).exists(), "{pin_dir} left");
    assert!(!node.dir.exists(), "{} left", node.dir.display());
    let link = Command::new("ip").args(["link", "show", &bridge]).output();
    assert!(!link.expect("ip").status.success(), "bridge {bridge} left");
}
