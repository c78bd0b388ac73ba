//! The seed walk-through on a local node that really runs its Deployments (pods are processes in
//! their own network namespace and cgroup, not containers): `kubectl apply -f
//! examples/seed/artifacts/apps` unchanged, the meshpath agent on the node, and the seed's curl
//! of golang-app-gateway-svc from a pod, by name, through gateway → springboot v1/v2 →
//! golang-app-data; then the user's own kubectl scale / patch, and the errors bad input gives.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use meshpath_tests::{skip_unless, LocalNode, KUBE_AGENT};

/// Spring Boot on two shared cores takes many seconds to start.
const START: Duration = Duration::from_secs(180);
const CONFIG: &str = "{\n  \"key1\": \"value1\",\n  \"key2\": \"value2\"\n}\n";
const CONFIG_KEY3: &str =
    "{\n  \"key1\": \"value1\",\n  \"key3\": \"value3\",\n  \"key2\": \"value2\"\n}\n";
/// The seed's answers of golang-app-gateway-svc (V2: before and after the ConfigMap's key3).
const GATEWAY_V1: &str =
    "Gateway get from upstream: [\n\n response from: springboot app V1\n\n]\n\n";
const SPRINGBOOT_V1: &str = "response from: springboot app V1\n";
fn springboot_v2(config: &str) -> String {
    format!("response from: springboot app V2, args: <data from golang-app-data: [{config}] >\n")
}
fn gateway_v2(config: &str) -> String {
    format!(
        "Gateway get from upstream: [\n\n response from: springboot app V2, args: <data from \
         golang-app-data: [{config}] >\n\n]\n\n"
    )
}

fn seed_apps_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/seed/artifacts/apps"
    ))
}

/// `curl` from the node's client pod; the body, or the error with curl's stderr.
fn get(node: &LocalNode, url: &str) -> Result<String, String> {
    let mut cmd = node.client().command("curl").expect("client command");
    cmd.args(["-sS", "--fail-with-body", "--max-time", "30", url])
        .stdin(Stdio::null());
    let out = cmd.output().expect("running curl");
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(body)
    } else {
        Err(format!(
            "curl {url}: {} {body:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Calls `url` until `ok(body)`; the last body (panics with the last answers on timeout).
fn get_until(
    node: &LocalNode,
    url: &str,
    timeout: Duration,
    mut ok: impl FnMut(&str) -> bool,
) -> String {
    let t0 = Instant::now();
    let mut last = Vec::new();
    loop {
        let r = get(node, url);
        if let Ok(body) = &r {
            if ok(body) {
                return body.clone();
            }
        }
        last.push(r);
        let n = last.len();
        last.drain(..n.saturating_sub(4));
        assert!(
            t0.elapsed() < timeout,
            "{url}: no expected answer within {timeout:?}; last answers: {last:#?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn local_node_runs_the_seed_apps_and_follows_kubectl_scale_and_configmap_edits() {
    skip_unless!(KUBE_AGENT);
    let t0 = Instant::now();
    let node = LocalNode::start().expect("local node");
    eprintln!("local node up in {:?}", t0.elapsed());
    node.apply_dir(seed_apps_dir())
        .expect("kubectl apply -f examples/seed/artifacts/apps");
    let _agent = node.start_agent(&[]).expect("meshpath agent");
    for (selector, n) in [
        ("app=golang-app-data", 1),
        ("app=golang-app-gateway", 1),
        ("app=python-app-anticaptcha", 1),
        ("app=springboot-app", 2),
    ] {
        let pods = node
            .wait_ready("default", selector, n, START)
            .expect("pods ready");
        eprintln!("{selector}: {pods:?} after {:?}", t0.elapsed());
    }
    let gateway = "http://golang-app-gateway-svc:8080/";
    let springboot = "http://springboot-app-svc:8080/";
    // The seed's curl of the gateway: its answer through springboot v1 or v2, byte for byte.
    // (The gateway keeps its connection to springboot-app-svc, and the kernel balances
    // connections, not requests: one version answers it until that connection ends.)
    let body = get_until(&node, gateway, Duration::from_secs(60), |_| true);
    assert!(body == GATEWAY_V1 || body == gateway_v2(CONFIG), "{body:?}");
    eprintln!("the gateway answered after {:?}", t0.elapsed());
    // A Service name that does not exist: the agent's DNS answers NXDOMAIN, and the client's
    // error names the host; the other names keep resolving.
    let missing = get(&node, "http://springboot-app-svc-typo:8080/")
        .expect_err("a name no Service has must not resolve");
    assert!(
        missing.contains("Could not resolve host: springboot-app-svc-typo"),
        "{missing}"
    );
    // Each curl is a new connection: both versions answer springboot-app-svc.
    let (mut saw_v1, mut saw_v2) = (false, false);
    get_until(&node, springboot, Duration::from_secs(60), |b| {
        assert!(b == SPRINGBOOT_V1 || b == springboot_v2(CONFIG), "{b:?}");
        saw_v1 |= b == SPRINGBOOT_V1;
        saw_v2 |= b == springboot_v2(CONFIG);
        saw_v1 && saw_v2
    });

    node.kubectl(&["scale", "deployment", "springboot-app-v2", "--replicas=0"])
        .expect("kubectl scale");
    node.wait_ready("default", "app=springboot-app", 1, START)
        .expect("v2 gone");
    // Once the mesh follows, only V1 answers.
    let mut v1_in_a_row = 0;
    get_until(&node, springboot, Duration::from_secs(30), |b| {
        v1_in_a_row = if b == SPRINGBOOT_V1 {
            v1_in_a_row + 1
        } else {
            0
        };
        v1_in_a_row == 5
    });
    for _ in 0..10 {
        assert_eq!(get(&node, springboot).as_deref(), Ok(SPRINGBOOT_V1));
    }
    get_until(&node, gateway, Duration::from_secs(30), |b| b == GATEWAY_V1);
    node.kubectl(&["scale", "deployment", "springboot-app-v2", "--replicas=1"])
        .expect("kubectl scale");
    node.wait_ready("default", "app=springboot-app,version=v2", 1, START)
        .expect("v2 back");
    get_until(&node, springboot, Duration::from_secs(60), |b| {
        b == springboot_v2(CONFIG)
    });
    eprintln!("scaled down and up again after {:?}", t0.elapsed());

    // The seed's 热更新: key3 added to the ConfigMap, seen by golang-app-data's next read and
    // through springboot v2, without a restart.
    let data_pods = node
        .wait_ready("default", "app=golang-app-data", 1, START)
        .unwrap();
    let patch = serde_json::json!({"data": {"config-data.json": CONFIG_KEY3}}).to_string();
    node.kubectl(&[
        "patch",
        "configmap",
        "golang-app-data-cm",
        "--type=merge",
        "-p",
        &patch,
    ])
    .expect("kubectl patch configmap");
    let t_edit = Instant::now();
    get_until(
        &node,
        "http://golang-app-data-svc:8080/",
        Duration::from_secs(20),
        |b| b == CONFIG_KEY3,
    );
    eprintln!("ConfigMap edit visible after {:?}", t_edit.elapsed());
    let body = get_until(&node, springboot, Duration::from_secs(30), |b| {
        b == springboot_v2(CONFIG_KEY3)
    });
    assert_eq!(body.len(), 136, "the seed's content-length");
    let after = node
        .wait_ready("default", "app=golang-app-data", 1, START)
        .unwrap();
    assert_eq!(after, data_pods, "the same pod: the file changed in place");
    let log = node.pod_log("default", &after[0].name);
    assert!(
        log.contains("changed"),
        "golang-app-data logs the new content:\n{log}"
    );
    // With v1 scaled away the gateway answers the seed's V2 curl output (content-length 171).
    node.kubectl(&["scale", "deployment", "springboot-app-v1", "--replicas=0"])
        .expect("kubectl scale");
    let body = get_until(&node, gateway, Duration::from_secs(60), |b| {
        b == gateway_v2(CONFIG_KEY3)
    });
    assert_eq!(body.len(), 171, "the seed's content-length");

    // The Secret, as the seed's secret-pod uses it (env and a volume at /etc/foo), added to
    // golang-app-data by the user's own patch: a rollout to a new pod.
    let secret_patch = r#"{"spec":{"template":{"spec":{
        "containers":[{"name":"golang-app-data","env":[{"name":"USERNAME",
            "valueFrom":{"secretKeyRef":{"name":"mysecret","key":"username"}}}],
          "volumeMounts":[{"name":"foo","mountPath":"/etc/foo","readOnly":true}]}],
        "volumes":[{"name":"foo","secret":{"secretName":"mysecret"}}]}}}}"#;
    node.kubectl(&[
        "patch",
        "deployment",
        "golang-app-data-v1",
        "-p",
        secret_patch,
    ])
    .expect("kubectl patch deployment");
    node.kubectl(&[
        "rollout",
        "status",
        "deployment/golang-app-data-v1",
        "--timeout=120s",
    ])
    .expect("rollout");
    let env = get_until(
        &node,
        "http://golang-app-data-svc:8080/env",
        Duration::from_secs(60),
        |b| b.contains("\"USERNAME\": \"admin\""),
    );
    let env: serde_json::Value = serde_json::from_str(&env).expect("JSON");
    assert_eq!(
        env,
        serde_json::json!({"CONFIG_VALUE1": "42", "CONFIG_VALUE2": "foo", "USERNAME": "admin",
            "secret_username": "admin",
            "config": {"key1": "value1", "key3": "value3", "key2": "value2"}})
    );
    // A Secret edit reaches the mounted file in place; the environment keeps the old value.
    node.kubectl(&[
        "patch",
        "secret",
        "mysecret",
        "--type=merge",
        "-p",
        r#"{"data":{"username":"cm9vdA=="}}"#,
    ])
    .expect("kubectl patch secret");
    let env = get_until(
        &node,
        "http://golang-app-data-svc:8080/env",
        Duration::from_secs(60),
        |b| b.contains("\"secret_username\": \"root\""),
    );
    assert!(env.contains("\"USERNAME\": \"admin\""), "{env}");
    assert!(node.pod_errors().is_empty(), "{:?}", node.pod_errors());
    eprintln!("whole walk-through in {:?}", t0.elapsed());
}

const BAD: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: cm
data:
  present: \"1\"
  config-data.json: |
    {\"ok\": true}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: unmapped
spec:
  selector: {matchLabels: {app: unmapped}}
  template:
    metadata: {labels: {app: unmapped}}
    spec:
      containers:
      - name: c
        image: example.test/not-in-the-table:v9
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: missing-key
spec:
  selector: {matchLabels: {app: missing-key}}
  template:
    metadata: {labels: {app: missing-key}}
    spec:
      containers:
      - name: c
        image: wardenlym/golang-app-data:v1
        env:
        - name: CONFIG_VALUE1
          valueFrom: {configMapKeyRef: {name: cm, key: absent}}
        ports: [{containerPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: good
spec:
  selector: {matchLabels: {app: good}}
  template:
    metadata: {labels: {app: good}}
    spec:
      containers:
      - name: c
        image: wardenlym/golang-app-data:v1
        ports: [{containerPort: 8080}]
        volumeMounts: [{name: config, mountPath: /app/config}]
      volumes:
      - name: config
        configMap: {name: cm}
";

fn waiting_reason(node: &LocalNode, app: &str) -> String {
    node.kubectl(&[
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={.items[0].status.containerStatuses[0].state.waiting.reason}",
    ])
    .unwrap_or_default()
}

#[test]
fn local_node_bad_input_names_the_pod_and_object_and_stops_nothing_else() {
    skip_unless!(KUBE_AGENT);
    let node = LocalNode::start().expect("local node");
    node.kube().apply_yaml(BAD).expect("apply");

    let e = node
        .wait_ready("default", "app=unmapped", 1, Duration::from_secs(60))
        .expect_err("an unmapped image cannot run");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("pod default/unmapped-") && msg.contains("example.test/not-in-the-table:v9"),
        "{msg}"
    );
    let e = node
        .wait_ready("default", "app=missing-key", 1, Duration::from_secs(60))
        .expect_err("a missing key stops the pod");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("pod default/missing-key-")
            && msg.contains("couldn't find key absent in ConfigMap default/cm"),
        "{msg}"
    );
    // As the kubelet reports them, for kubectl get/describe.
    let t0 = Instant::now();
    while waiting_reason(&node, "unmapped") != "ErrImageNeverPull"
        || waiting_reason(&node, "missing-key") != "CreateContainerConfigError"
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "status not reported"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let events = node
        .kubectl(&["get", "events", "-o", "jsonpath={.items[*].message}"])
        .unwrap();
    assert!(events.contains("couldn't find key absent"), "{events}");
    assert!(
        events.contains("example.test/not-in-the-table:v9"),
        "{events}"
    );

    // The good pod runs meanwhile and serves its ConfigMap file.
    let good = node
        .wait_ready("default", "app=good", 1, Duration::from_secs(60))
        .expect("the good pod runs");
    let body = get(&node, &format!("http://{}:8080/", good[0].ip)).expect("GET good pod");
    assert_eq!(body, "{\"ok\": true}\n");

    // Adding the key lets the pod start, as the kubelet retries.
    node.kubectl(&[
        "patch",
        "configmap",
        "cm",
        "--type=merge",
        "-p",
        r#"{"data":{"absent":"now"}}"#,
    ])
    .unwrap();
    let fixed = node
        .wait_ready("default", "app=missing-key", 1, Duration::from_secs(60))
        .expect("the pod starts once the key exists");
    let env = get(&node, &format!("http://{}:8080/env", fixed[0].ip)).unwrap();
    assert!(env.contains("\"CONFIG_VALUE1\": \"now\""), "{env}");

    // Deleting the Deployment stops the pod and finishes its deletion.
    node.kubectl(&["delete", "deployment", "good"]).unwrap();
    node.wait_ready("default", "app=good", 0, Duration::from_secs(30))
        .unwrap();
    let t0 = Instant::now();
    while !node
        .kubectl(&["get", "pods", "-l", "app=good", "-o", "name"])
        .unwrap()
        .trim()
        .is_empty()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the pod object stays"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(get(&node, &format!("http://{}:8080/", good[0].ip)).is_err());
    assert!(
        !node.pod_errors().is_empty(),
        "the unmapped image is still reported"
    );
}
