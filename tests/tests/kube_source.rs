//! `meshpath agent --source kube` against a real kube-apiserver, etcd and kube-controller-manager
//! (built by scripts/kube-bins.sh): Deployments and Services applied with kubectl become
//! EndpointSlices through the real controllers, and the agent's maps follow them — scaling up,
//! down and to zero (the seed's `kubectl scale --replicas=0`), through an API server restart, and
//! Istio VirtualService/DestinationRule changes. The test plays the kubelet (see
//! `meshpath_tests::kube::FakeKubelet`): pod IPs are those of the test node's pod namespaces.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use meshpath_tests::agent::{self, Agent};
use meshpath_tests::kube::{FakeKubelet, KubeCluster};
use meshpath_tests::{skip_unless, wait_until, ClientReport, Node, Proxy, Source, KUBE_AGENT};

const WEB_VIP: &str = "10.96.0.80";
const REVIEWS_VIP: &str = "10.96.0.81";
const NODE: &str = "node-a";

fn deployment(name: &str, labels: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{{labels}}}\n  template:\n    metadata:\n      labels: {{{labels}}}\n    spec:\n      containers:\n      - name: app\n        image: example.invalid/app\n        ports:\n        - name: http\n          containerPort: 8080\n"
    )
}

/// A Service whose targetPort is the containers' port *name*, as most charts write it.
fn service(name: &str, vip: &str, port: u16, selector: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  clusterIP: {vip}\n  selector: {{{selector}}}\n  ports:\n  - name: http\n    port: {port}\n    targetPort: http\n"
    )
}

/// The agent on `--source kube` as node `node-a`, with or without its node proxy.
fn start_agent(node: &Node, kube: &KubeCluster, proxy: Proxy) -> Agent {
    let source = Source::Kube {
        cluster: kube,
        node_name: NODE,
    };
    node.start_agent(source, proxy, &[])
        .expect("starting meshpath agent --source kube")
}

/// Sorted backends of the service row starting with `svc`, `None` while it has no row.
fn backends_of(a: &Agent, svc: &str) -> Option<Vec<String>> {
    let status = a.status().expect("meshpath status");
    let mut b = agent::service(&status, svc)?["backends"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    b.sort();
    Some(b)
}

/// Waits until the service row starting with `svc` has exactly `backends`; returns how long.
fn wait_backends(a: &Agent, svc: &str, mut backends: Vec<String>, timeout: Duration) -> Duration {
    backends.sort();
    let t0 = Instant::now();
    let mut now = None;
    let reached = wait_until(timeout, || {
        now = backends_of(a, svc);
        now.as_ref() == Some(&backends)
    });
    assert!(
        reached,
        "{svc}: backends {now:?}, want {backends:?}\nagent log:\n{}",
        a.log()
    );
    t0.elapsed()
}

/// Waits until the agent has logged `needle`.
fn wait_log(a: &Agent, needle: &str, timeout: Duration) {
    let logged = wait_until(timeout, || a.log().contains(needle));
    assert!(logged, "no {needle:?} in the agent log:\n{}", a.log());
}

fn eps(node: &Node, pods: &[usize], port: u16) -> Vec<String> {
    pods.iter()
        .map(|&i| format!("{}:{port}", node.pod(i).ip()))
        .collect()
}

fn ips(node: &Node, pods: &[usize]) -> Vec<Ipv4Addr> {
    pods.iter().map(|&i| node.pod(i).ip()).collect()
}

/// Waits until the EndpointSlice controller lists exactly `n` ready endpoints for `service`, so
/// that the agent's part can be timed (and told apart from the controllers' own lag, e.g.
/// right after an API server restart).
fn wait_slice_ready(kube: &KubeCluster, service: &str, n: usize) {
    let what = format!("EndpointSlices of {service} list {n} ready endpoints");
    kube.poll_until(&what, Duration::from_secs(60), || {
        let label = format!("kubernetes.io/service-name={service}");
        let slices = kube.get_json(&["endpointslices", "-l", &label])?;
        let ready = slices["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"].as_bool() != Some(false))
            .count();
        Ok((ready == n).then_some(()))
    })
    .expect("EndpointSlice controller");
}

/// Plays the kubelet until no pod matches `selector`: finishes the deletion of terminating ones.
fn finish_all_pods(kube: &KubeCluster, kubelet: &FakeKubelet<'_>, selector: &str) {
    kube.poll_until("pods gone", Duration::from_secs(30), || {
        kubelet.finish_terminating("default", selector)?;
        let pods = kube.get_json(&["pods", "-l", selector])?;
        Ok(pods["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(()))
    })
    .expect("pods deleted");
}

fn tcp(node: &Node, vip: &str, n: u32) -> ClientReport {
    let addr: SocketAddr = format!("{vip}:80").parse().expect("addr");
    node.tcp(0, addr, n).expect("tcp client")
}

#[test]
fn kernel_maps_follow_deployments_scaling_and_an_apiserver_restart() {
    skip_unless!(KUBE_AGENT);
    let node = Node::new(4).expect("node");
    for i in 1..=3 {
        node.spawn_server(i, &format!("web-{i}"), &[8080], &[], &[])
            .expect("server");
    }
    let kube = KubeCluster::start().expect("kube cluster");
    install_istio_crds(&kube);
    let kubelet = kube.kubelet(NODE).expect("kubelet");
    kube.apply_yaml(&format!(
        "{}---\n{}---\n{}",
        deployment("web", "app: web", 2),
        service("web", WEB_VIP, 80, "app: web"),
        web_rules(7)
    ))
    .expect("apply web");
    let two = kubelet
        .run_pods(
            "default",
            "app=web",
            &ips(&node, &[1, 2]),
            Duration::from_secs(30),
        )
        .expect("pods run");
    assert_eq!(two.len(), 2);

    let a = start_agent(&node, &kube, Proxy::Off);
    wait_backends(
        &a,
        "default/web:",
        eps(&node, &[1, 2], 8080),
        Duration::from_secs(10),
    );
    let r = tcp(&node, WEB_VIP, 40);
    assert_eq!(r.count("web-1") + r.count("web-2"), 40, "{r:?}");
    assert!(r.count("web-1") > 0 && r.count("web-2") > 0, "{r:?}");

    // Scale up: the controllers add the pod, the agent adds the backend.
    kube.kubectl_ok(["scale", "deployment", "web", "--replicas=3"])
        .expect("scale");
    kubelet
        .run_pods(
            "default",
            "app=web",
            &ips(&node, &[1, 2, 3]),
            Duration::from_secs(30),
        )
        .expect("third pod runs");
    let took = wait_backends(
        &a,
        "default/web:",
        eps(&node, &[1, 2, 3], 8080),
        Duration::from_secs(10),
    );
    eprintln!("scale to 3: kubelet report → backend programmed in {took:?}");
    let r = tcp(&node, WEB_VIP, 60);
    assert!((1..=3).all(|i| r.count(&format!("web-{i}")) > 0), "{r:?}");

    // The API server goes away: what is programmed stays and keeps serving.
    let failed = || a.log().matches("watch failed").count();
    let failed_before = failed();
    kube.stop_apiserver().expect("stop apiserver");
    // Traffic once the agent has seen the API server go (its watches fail).
    let seen = wait_until(Duration::from_secs(30), || failed() > failed_before);
    assert!(seen, "no watch failure logged:\n{}", a.log());
    let r = tcp(&node, WEB_VIP, 30);
    assert_eq!(r.ok(), 30, "traffic while the API server is down: {r:?}");
    kube.start_apiserver().expect("start apiserver");

    // After the restart the watches resume: scaling down is seen.
    kube.kubectl_ok(["scale", "deployment", "web", "--replicas=1"])
        .expect("scale to 1");
    let left = kube
        .poll_until("one web pod left running", Duration::from_secs(30), || {
            kubelet.finish_terminating("default", "app=web")?;
            let pods = kube.get_json(&["pods", "-l", "app=web"])?;
            let live: Vec<String> = pods["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter_map(|p| p["status"]["podIP"].as_str().map(String::from))
                .collect();
            Ok((live.len() == 1).then(|| live[0].clone()))
        })
        .expect("scaled to 1");
    wait_slice_ready(&kube, "web", 1);
    wait_backends(
        &a,
        "default/web:",
        vec![format!("{left}:8080")],
        Duration::from_secs(15),
    );
    let r = tcp(&node, WEB_VIP, 20);
    assert_eq!(r.ok(), 20, "{r:?}");
    assert_eq!(r.counts.len(), 1, "one backend left: {r:?}");

    // The seed's `kubectl scale --replicas=0`: once the pods are gone (until then they are
    // terminating but serving, and used as kube-proxy would), connects are refused at once.
    kube.kubectl_ok(["scale", "deployment", "web", "--replicas=0"])
        .expect("scale to 0");
    finish_all_pods(&kube, &kubelet, "app=web");
    wait_slice_ready(&kube, "web", 0);
    let took = wait_backends(&a, "default/web:", vec![], Duration::from_secs(5));
    eprintln!("scale to 0: slice emptied → backends removed in {took:?}");
    let r = tcp(&node, WEB_VIP, 10);
    assert_eq!(r.errors.get("ECONNREFUSED"), Some(&10), "{r:?}");

    // The per-change passes left the maps as a full compile writes them: `meshpath recompile`
    // (exit status 1 on a difference) finds none.
    let admin = a.admin_addr().expect("admin listener").to_owned();
    let recompile_finds_no_drift = || {
        let report = agent::meshpath(["recompile", "--admin-addr", &admin])
            .unwrap_or_else(|e| panic!("{e:#}\n{}", a.log()));
        assert!(report.starts_with("full recompile: same"), "{report}");
        assert!(
            report.contains("continued from: per-Service passes"),
            "{report}"
        );
    };
    recompile_finds_no_drift();
    // So does an edit of web's DestinationRule, which changes web alone.
    kube.apply_yaml(&web_rules(9)).expect("edit the rule");
    let limit = || {
        let status = a.status().expect("meshpath status");
        agent::service(&status, "default/web:").map(|s| s["max_connections"].clone())
    };
    let nine = wait_until(Duration::from_secs(10), || limit() == Some(9.into()));
    assert!(nine, "web's limit is {:?}:\n{}", limit(), a.log());
    recompile_finds_no_drift();

    // Deleting the Service removes its frontend.
    kube.kubectl_ok(["delete", "service", "web"])
        .expect("delete");
    let gone = wait_until(Duration::from_secs(10), || {
        backends_of(&a, "default/web:").is_none()
    });
    assert!(gone, "default/web still programmed:\n{}", a.log());
}

/// meshpath's copy of Istio's CRDs, as `kubectl apply -f deploy/` installs them.
fn install_istio_crds(kube: &KubeCluster) {
    let crds = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/10-crds-istio.yaml"
    ))
    .expect("deploy/10-crds-istio.yaml");
    kube.apply_yaml(&crds).expect("CRDs");
    kube.kubectl_ok([
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/virtualservices.networking.istio.io",
        "crd/destinationrules.networking.istio.io",
    ])
    .expect("CRDs established");
}

/// A DestinationRule for web (round robin, `max` connections) and a VirtualService for another
/// Service: present, so the per-Service pass applies web's rule itself.
fn web_rules(max: u32) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: web\nspec:\n  host: web\n  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n    connectionPool: {{tcp: {{maxConnections: {max}}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: other\nspec:\n  hosts: [other]\n  tcp:\n  - route:\n    - destination: {{host: other}}\n")
}

/// Routes `end-user: jason` to v2 and everything else to v3 (the seed's reviews example).
const JASON_VS: &str = "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts:\n  - reviews\n  http:\n  - match:\n    - headers:\n        end-user:\n          exact: jason\n    route:\n    - destination:\n        host: reviews\n        subset: v2\n  - route:\n    - destination:\n        host: reviews\n        subset: v3\n";

const REVIEWS_DR: &str = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews.default.svc.cluster.local\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n  - name: v3\n    labels:\n      version: v3\n";

fn http(node: &Node, header: Option<&str>, n: u32) -> ClientReport {
    let addr = format!("{REVIEWS_VIP}:80");
    let n = n.to_string();
    let mut args = vec!["http", "--addr", &addr, "--count", &n];
    if let Some(h) = header {
        args.extend_from_slice(&["--header", h]);
    }
    serde_json::from_value(node.run_client(0, &args).expect("http client")).expect("report")
}

fn wait_http(a: &Agent, what: &str, ok: impl FnMut() -> bool) {
    let reached = wait_until(Duration::from_secs(15), ok);
    assert!(reached, "{what}: not reached\nagent log:\n{}", a.log());
}

#[test]
fn istio_routes_from_the_api_follow_virtual_service_changes_and_scale_to_zero_answers_503() {
    skip_unless!(KUBE_AGENT);
    let node = Node::new(4).expect("node");
    for i in 1..=3 {
        node.spawn_server(i, &format!("reviews-v{i}"), &[], &[], &[8080])
            .expect("server");
    }
    let kube = KubeCluster::start().expect("kube cluster");
    install_istio_crds(&kube);
    let kubelet = kube.kubelet(NODE).expect("kubelet");
    let mut objects = vec![service("reviews", REVIEWS_VIP, 80, "app: reviews")];
    for v in 1..=3 {
        objects.push(deployment(
            &format!("reviews-v{v}"),
            &format!("app: reviews, version: v{v}"),
            1,
        ));
    }
    objects.push(REVIEWS_DR.to_owned());
    objects.push(JASON_VS.to_owned());
    kube.apply_yaml(&objects.join("---\n")).expect("apply");
    for v in 1..=3 {
        kubelet
            .run_pods(
                "default",
                &format!("app=reviews,version=v{v}"),
                &ips(&node, &[v]),
                Duration::from_secs(30),
            )
            .expect("pods run");
    }

    let a = start_agent(&node, &kube, Proxy::On);
    wait_http(&a, "jason → v2, others → v3", || {
        let j = http(&node, Some("end-user: jason"), 20);
        let o = http(&node, None, 20);
        j.count("reviews-v2") == 20 && o.count("reviews-v3") == 20
    });

    // Edit the VirtualService with kubectl: everyone to v1.
    let to_v1 = JASON_VS.replace("subset: v3", "subset: v1");
    kube.apply_yaml(&to_v1).expect("apply edit");
    wait_http(&a, "others → v1 after the edit", || {
        http(&node, None, 20).count("reviews-v1") == 20
    });

    // A change the CRD's schema lets through but Istio's validation does not: the agent
    // names object and field, and the last good version stays live.
    let broken = to_v1.replace("exact: jason", "regex: \"([\"");
    kube.apply_yaml(&broken).expect("apply broken");
    wait_log(
        &a,
        "VirtualService default/reviews",
        Duration::from_secs(10),
    );
    let j = http(&node, Some("end-user: jason"), 20);
    assert_eq!(j.count("reviews-v2"), 20, "last good stays: {j:?}");

    // The seed scales the workload to zero: through the proxy that is a 503.
    for v in 1..=3 {
        kube.kubectl_ok([
            "scale",
            "deployment",
            &format!("reviews-v{v}"),
            "--replicas=0",
        ])
        .expect("scale to 0");
    }
    finish_all_pods(&kube, &kubelet, "app=reviews");
    wait_http(&a, "503 with no endpoints", || {
        let r = http(&node, None, 5);
        r.answers.keys().any(|k| k.starts_with("503"))
    });

    // Without the VirtualService and still without endpoints, the HTTP port stays with the
    // proxy only to answer 503 as Envoy does (`--http-no-endpoint-503`), not a refusal.
    kube.kubectl_ok(["delete", "virtualservice", "reviews"])
        .expect("delete vs");
    wait_backends(&a, "default/reviews:", vec![], Duration::from_secs(10));
    wait_http(&a, "503 without the VirtualService", || {
        let r = http(&node, None, 5);
        r.answers.keys().all(|k| k.starts_with("503"))
    });
    let steered = meshpath_tests::wait_until(Duration::from_secs(10), || {
        let s = a.status().expect("meshpath status");
        agent::service(&s, "default/reviews:").is_some_and(|r| r.get("proxy").is_some())
    });
    assert!(
        steered,
        "reviews with no endpoint should stay with the proxy for its 503"
    );

    // A pod back: reviews leaves the proxy (the full pass, which closes its listener).
    let scale_up = |v: usize| {
        let name = format!("reviews-v{v}");
        kube.kubectl_ok(["scale", "deployment", &name, "--replicas=1"])
            .expect("scale up");
        let selector = format!("app=reviews,version=v{v}");
        kubelet
            .run_pods(
                "default",
                &selector,
                &ips(&node, &[v]),
                Duration::from_secs(30),
            )
            .expect("pods run");
    };
    scale_up(1);
    wait_http(&a, "v1 again", || {
        http(&node, None, 10).count("reviews-v1") == 10
    });
    let unsteered = wait_until(Duration::from_secs(10), || {
        let s = a.status().expect("meshpath status");
        agent::service(&s, "default/reviews:").is_some_and(|r| r.get("proxy").is_none())
    });
    assert!(unsteered, "reviews has endpoints again:\n{}", a.log());
    // The next one is a per-Service pass with the proxy on: it replaces reviews' entry in the
    // proxy's routing table too, which a full recompile then finds as it would build it.
    let scoped_before = a.log().matches("services_changed").count();
    let full_before = a.log().matches("compiling every Service").count();
    let applied_before = a.log().matches("proxy config applied").count();
    scale_up(2);
    let both = eps(&node, &[1, 2], 8080);
    wait_backends(&a, "default/reviews:", both, Duration::from_secs(10));
    assert!(
        a.log().matches("services_changed").count() > scoped_before,
        "no per-Service pass:\n{}",
        a.log()
    );
    assert_eq!(
        a.log().matches("compiling every Service").count(),
        full_before,
        "a full pass ran:\n{}",
        a.log()
    );
    // The proxy got the new table (its publication follows the maps, off the pass).
    let applied = wait_until(Duration::from_secs(5), || {
        a.log().matches("proxy config applied").count() > applied_before
    });
    assert!(applied, "the proxy's table did not follow:\n{}", a.log());
    let admin = a.admin_addr().expect("admin listener").to_owned();
    let report = agent::meshpath(["recompile", "--admin-addr", &admin])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", a.log()));
    assert!(report.starts_with("full recompile: same"), "{report}");
    assert!(
        report.contains("node proxy's routing table: same"),
        "{report}"
    );
}

/// `meshpath.io/socket-redirect` from the API: a Namespace annotation opts its pods in, a pod's
/// own `"false"` opts it out again, and the kernel's set of opted-in pod addresses follows.
#[test]
fn socket_redirect_opt_in_follows_namespace_and_pod_annotations() {
    skip_unless!(KUBE_AGENT);
    let node = Node::new(3).expect("node");
    let kube = KubeCluster::start().expect("kube cluster");
    let kubelet = kube.kubelet(NODE).expect("kubelet");
    kube.apply_yaml(&deployment("web", "app: web", 2))
        .expect("apply web");
    let pods = kubelet
        .run_pods(
            "default",
            "app=web",
            &ips(&node, &[1, 2]),
            Duration::from_secs(30),
        )
        .expect("pods run");
    let a = start_agent(&node, &kube, Proxy::Off);
    let opted_in = |n: u64| {
        wait_until(Duration::from_secs(10), || {
            a.status().expect("status")["socket_redirect"]["opted_in_pods"] == n
        })
    };
    assert!(opted_in(0), "{}", a.log());
    kube.kubectl_ok([
        "annotate",
        "namespace",
        "default",
        "meshpath.io/socket-redirect=true",
    ])
    .expect("annotate namespace");
    assert!(opted_in(2), "namespace opt-in not applied\n{}", a.log());
    let pod = format!("pod/{}", pods[0].name);
    kube.kubectl_ok([
        "annotate",
        pod.as_str(),
        "meshpath.io/socket-redirect=false",
    ])
    .expect("annotate pod");
    assert!(opted_in(1), "pod opt-out not applied\n{}", a.log());
}
