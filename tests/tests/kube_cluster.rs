//! Self-tests of the harness's real control plane (`KubeCluster`: etcd, kube-apiserver and
//! kube-controller-manager built by `scripts/kube-bins.sh`) and of its stand-in kubelet.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use meshpath_tests::{skip_unless, KubeCluster, KubeOptions, KUBE};
use serde_json::Value;

const WEB_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
";

const WEB_DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: meshpath-test/web:1
        ports:
        - containerPort: 8080
";

fn start(opts: KubeOptions) -> KubeCluster {
    let kube = KubeCluster::start_with(opts).expect("start the test cluster");
    eprintln!(
        "{}: control plane ready in {:.1?} (apiserver {})",
        kube.id().base(),
        kube.startup_time(),
        kube.server_url()
    );
    kube
}

/// Whether a process we started is gone: its pid no longer exists, or (recycled) now belongs to
/// something that does not mention our run directory.
fn gone(pid: u32, run_dir: &Path) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Err(_) => true,
        Ok(cmdline) => !String::from_utf8_lossy(&cmdline).contains(&*run_dir.to_string_lossy()),
    }
}

#[test]
fn cluster_serves_objects_and_cleans_up() {
    skip_unless!(KUBE);
    let kube = start(KubeOptions {
        service_cidr: "10.123.0.0/24".to_owned(),
    });
    // The binaries report the release they were built as (kube-bins.sh's -ldflags); clients
    // parse this, so an unversioned build would break kube-rs and kubectl alike.
    let version = kube
        .kubectl_ok(["version", "-o", "json"])
        .expect("kubectl version");
    let version: Value = serde_json::from_str(&version).expect("version JSON");
    assert_eq!(
        version["serverVersion"]["gitVersion"],
        meshpath_tests::kube::KUBE_VERSION
    );

    let out = kube.apply_yaml(WEB_SERVICE).expect("apply the Service");
    assert!(out.contains("service/web created"), "{out}");
    let svc = kube
        .get_json(&["service", "web", "-n", "default"])
        .expect("get");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080, "{svc:#}");
    let ip: Ipv4Addr = svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a ClusterIP");
    assert_eq!(
        ip.octets()[..3],
        [10, 123, 0],
        "ClusterIP {ip} outside 10.123.0.0/24"
    );
    // The token really is checked: a wrong one is refused.
    let refused = kube
        .kubectl(["get", "services", "--token=not-the-token"])
        .expect("run kubectl");
    assert!(!refused.status.success(), "a wrong token was accepted");

    let dir = kube.run_dir().to_owned();
    let pids = kube.pids();
    assert_eq!(pids.len(), 3, "{pids:?}");
    drop(kube);
    assert!(!dir.exists(), "{} survived the drop", dir.display());
    for (label, pid) in pids {
        assert!(gone(pid, &dir), "{label} (pid {pid}) survived the drop");
    }
}

#[test]
fn panicking_test_still_stops_the_cluster() {
    skip_unless!(KUBE);
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let kube = KubeCluster::start().expect("start the test cluster");
        tx.send((kube.run_dir().to_owned(), kube.pids())).unwrap();
        panic!("deliberate panic with a running cluster");
    })
    .join();
    assert!(result.is_err(), "the thread was meant to panic");
    let (dir, pids) = rx.recv().expect("the cluster started");
    assert!(!dir.exists(), "{} survived the panic", dir.display());
    for (label, pid) in pids {
        assert!(gone(pid, &dir), "{label} (pid {pid}) survived the panic");
    }
}

#[test]
fn apiserver_restart_keeps_state_and_controllers_resync() {
    skip_unless!(KUBE);
    let kube = start(KubeOptions::default());
    kube.apply_yaml(WEB_SERVICE).expect("apply the Service");
    let before = kube.get_json(&["service", "web"]).expect("get");
    let url = kube.server_url();

    let took = kube.restart_apiserver().expect("restart the apiserver");
    eprintln!("{}: apiserver restarted in {took:.1?}", kube.id().base());
    assert_eq!(kube.server_url(), url, "the apiserver moved");
    let after = kube
        .get_json(&["service", "web"])
        .expect("get after restart");
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(after["spec"]["clusterIP"], before["spec"]["clusterIP"]);

    // While it is down nothing answers; afterwards the controller-manager, which kept running,
    // has re-established its watches and acts on new objects.
    kube.stop_apiserver().expect("stop");
    let down = kube
        .kubectl(["get", "service", "web", "--request-timeout=3s"])
        .expect("run kubectl");
    assert!(!down.status.success(), "a stopped apiserver answered");
    kube.start_apiserver().expect("start again");
    kube.apply_yaml(WEB_DEPLOYMENT)
        .expect("apply the Deployment");
    let rs = kube
        .poll_until(
            "the Deployment has a ReplicaSet with 2 pods",
            Duration::from_secs(60),
            || {
                let list = kube.get_json(&["replicasets", "-l", "app=web"])?;
                let rs = list["items"][0].clone();
                Ok((rs["status"]["replicas"] == 2).then_some(rs))
            },
        )
        .expect("controllers resync after the restart");
    assert_eq!(rs["metadata"]["ownerReferences"][0]["name"], "web");
}

/// Endpoints of the EndpointSlices of Service `web`: (address, ready, terminating).
fn web_endpoints(kube: &KubeCluster) -> anyhow::Result<Vec<(String, bool, bool)>> {
    let slices = kube.get_json(&["endpointslices", "-l", "kubernetes.io/service-name=web"])?;
    let mut eps = Vec::new();
    for slice in slices["items"].as_array().into_iter().flatten() {
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            eps.push((
                ep["addresses"][0].as_str().unwrap_or_default().to_owned(),
                ep["conditions"]["ready"] == true,
                ep["conditions"]["terminating"] == true,
            ));
        }
    }
    eps.sort();
    Ok(eps)
}

#[test]
fn fake_kubelet_drives_the_endpointslice_controller() {
    skip_unless!(KUBE);
    let kube = start(KubeOptions::default());
    kube.apply_yaml(&format!("{WEB_SERVICE}---\n{WEB_DEPLOYMENT}"))
        .expect("apply");
    let kubelet = kube.kubelet("mpt-node-a").expect("register the node");
    let ips = [Ipv4Addr::new(10, 200, 0, 11), Ipv4Addr::new(10, 200, 0, 12)];
    let t0 = Instant::now();
    let pods = kubelet
        .run_pods("default", "app=web", &ips, Duration::from_secs(60))
        .expect("the Deployment's pods run");
    assert_eq!(pods.len(), 2, "{pods:?}");
    for pod in &kube.get_json(&["pods", "-l", "app=web"]).unwrap()["items"]
        .as_array()
        .unwrap()
        .clone()
    {
        assert_eq!(pod["spec"]["nodeName"], "mpt-node-a", "{pod:#}");
        assert_eq!(pod["status"]["phase"], "Running", "{pod:#}");
    }
    let want: Vec<(String, bool, bool)> =
        ips.iter().map(|ip| (ip.to_string(), true, false)).collect();
    kube.poll_until(
        "the slice lists both pods ready",
        Duration::from_secs(30),
        || Ok((web_endpoints(&kube)? == want).then_some(())),
    )
    .expect("ready endpoints");
    eprintln!(
        "{}: 2 ready endpoints {:.1?} after the kubelet step",
        kube.id().base(),
        t0.elapsed()
    );

    // Scaling to zero: the ReplicaSet controller deletes the pods gracefully; bound pods stay
    // (terminating) until their kubelet finishes them, and the slice says so.
    kube.kubectl_ok(["scale", "deployment", "web", "--replicas=0"])
        .expect("scale");
    let terminating: Vec<(String, bool, bool)> =
        ips.iter().map(|ip| (ip.to_string(), false, true)).collect();
    kube.poll_until(
        "both endpoints are terminating",
        Duration::from_secs(30),
        || Ok((web_endpoints(&kube)? == terminating).then_some(())),
    )
    .expect("terminating endpoints");
    let finished = kubelet
        .finish_terminating("default", "app=web")
        .expect("finish deletion");
    assert_eq!(finished.len(), 2, "{finished:?}");
    kube.poll_until("the slice is empty", Duration::from_secs(30), || {
        Ok(web_endpoints(&kube)?.is_empty().then_some(()))
    })
    .expect("no endpoints left");
    let left = kube.get_json(&["pods", "-l", "app=web"]).unwrap();
    assert_eq!(left["items"].as_array().map(Vec::len), Some(0), "{left:#}");
}

#[test]
fn two_clusters_run_side_by_side() {
    skip_unless!(KUBE);
    let starts: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(|| start(KubeOptions::default())))
        .collect();
    let clusters: Vec<KubeCluster> = starts
        .into_iter()
        .map(|t| t.join().expect("cluster start thread"))
        .collect();
    let (a, b) = (&clusters[0], &clusters[1]);
    assert_ne!(a.server_url(), b.server_url());
    assert_ne!(a.etcd_url(), b.etcd_url());
    assert_ne!(a.token(), b.token());
    a.apply_yaml(WEB_SERVICE).expect("apply to a");
    assert!(a.get_json(&["service", "web"]).is_ok());
    let in_b = b.kubectl(["get", "service", "web"]).expect("run kubectl");
    assert!(
        !in_b.status.success(),
        "b sees a's Service: the clusters share state"
    );
    // Each cluster's credentials are its own: a's token is refused by b.
    let cross = b
        .kubectl(["get", "services", &format!("--token={}", a.token())])
        .expect("run kubectl");
    assert!(!cross.status.success(), "b accepted a's token");
}
