//! The seed's apps as containers: their images (scripts/lib/seed-images.sh: the Go binaries, the
//! Python app with its venv and interpreter, the Spring Boot jar with a jlink'd Java runtime) are
//! imported under the names examples/seed/artifacts/apps uses, and that directory is applied
//! with kubectl unchanged. The gateway's `/` goes gateway → springboot-app (v1 or v2, both
//! Deployments) → for v2 golang-app-data, each hop by Service name (the agent's DNS) and
//! ClusterIP (the pinned programs).

use std::time::{Duration, Instant};

use meshpath_tests::poll;

use crate::node::{repo, RealNode};

pub struct SeedRun {
    pub images: Duration,
    pub ready: Duration,
    pub answered: Duration,
    pub gateway_body: String,
    pub python: (u16, String),
}

fn cluster_ip(node: &RealNode, svc: &str) -> String {
    let ip = node.kubectl_ok(&["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"]);
    format!("{}:8080", ip.trim())
}

/// The pods and the last lines of the seed apps' (previous) containers, for a failure.
fn diagnose(node: &RealNode) {
    eprintln!(
        "{}",
        String::from_utf8_lossy(&node.kubectl(&["get", "pods", "-o", "wide"]).stdout)
    );
    for app in [
        "golang-app-gateway-v1",
        "springboot-app-v1",
        "springboot-app-v2",
    ] {
        for prev in ["--previous=false", "--previous=true"] {
            let out = node.kubectl(&["logs", &format!("deploy/{app}"), prev, "--tail=15"]);
            eprintln!(
                "--- {app} {prev} ---\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

pub fn seed_apps_through_the_gateway(node: &RealNode) -> SeedRun {
    let t0 = Instant::now();
    let imported = node.script("node.sh", &["seed-images"]);
    assert!(
        imported.status.success(),
        "node.sh seed-images: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let images = t0.elapsed();
    let apps = repo().join("examples/seed/artifacts/apps");
    node.kubectl_ok(&["apply", "-f", apps.to_str().expect("utf-8 path")]);
    node.kubectl_ok(&[
        "wait",
        "--for=condition=Available",
        "deployment",
        "--all",
        "--timeout=300s",
    ]);
    let ready = t0.elapsed() - images;

    let t1 = Instant::now();
    let gateway = cluster_ip(node, "golang-app-gateway-svc");
    let mut last = Err(String::new());
    // The JVMs' first requests are slow: each request may take up to 20 s.
    let body = poll(Duration::from_secs(120), || {
        last = node.http(&gateway, "/", 20);
        match &last {
            Ok((200, b)) => Some(b.clone()),
            _ => None,
        }
    });
    let gateway_body = body.unwrap_or_else(|| {
        diagnose(node);
        panic!("gateway {gateway}: {last:?}")
    });
    assert!(
        gateway_body.starts_with("Gateway get from upstream")
            && gateway_body.contains("response from: springboot app V"),
        "{gateway_body:?}"
    );
    // The gateway keeps its connection to one springboot-app pod; from the client, each request
    // is a new connection, balanced anew, until v2 answered, whose answer comes from
    // golang-app-data.
    let springboot = cluster_ip(node, "springboot-app-svc");
    let v2 = poll(Duration::from_secs(60), || {
        last = node.http(&springboot, "/", 20);
        match &last {
            Ok((200, b)) if b.contains("springboot app V2") => Some(b.clone()),
            _ => None,
        }
    });
    let v2 = v2.unwrap_or_else(|| {
        diagnose(node);
        panic!("springboot-app v2 {springboot}: {last:?}")
    });
    assert!(v2.contains("data from golang-app-data"), "{v2:?}");
    let answered = t1.elapsed();
    // The Python app answers a GET with its usage (404, JSON).
    let python = node
        .http(&cluster_ip(node, "python-app-anticaptcha-svc"), "/", 5)
        .expect("python-app-anticaptcha");
    assert_eq!(python.0, 404, "{python:?}");
    assert!(python.1.contains("multipart"), "{python:?}");
    SeedRun {
        images,
        ready,
        answered,
        gateway_body,
        python,
    }
}
