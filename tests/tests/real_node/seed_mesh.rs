//! The seed's Istio YAML on the real node, applied with kubectl unchanged over the seed's apps
//! (seed.rs): `examples/seed/artifacts/mesh/routes.yaml` steers the four apps' Services to the
//! node's proxy, which then balances each of the gateway's requests to springboot-app over v1 and
//! v2 (about half each); the seed's 20/80 VirtualService with
//! its subsets (`examples/seed/artifacts/sample`) splits the gateway's answers by weight; and the
//! seed's captcha upload (a multipart POST of a PNG, as `seed_apps.rs` and the walk-through send
//! it) is answered through the gateway and directly, through the proxy. The Istio CRDs come with
//! `deploy/` (10-crds-istio.yaml), which `node.sh deploy` applied.

use std::time::{Duration, Instant};

use meshpath_tests::poll;

use crate::node::{repo, RealNode};

#[path = "../seed_apps/png.rs"]
#[allow(dead_code)]
mod png;

pub struct MeshRun {
    /// From `kubectl apply` of routes.yaml until the gateway's answers came from both versions.
    pub steered: Duration,
    /// (v1, v2) answers of 40 gateway requests with routes.yaml, once both versions answered.
    pub balanced: (usize, usize),
    /// (v1, v2) answers of 100 gateway requests with the seed's 20/80 VirtualService.
    pub weighted: (usize, usize),
    /// The captcha service's answer through the gateway and directly.
    pub captcha: (String, String),
}

const GATEWAY: &str = "golang-app-gateway-svc";
const CAPTCHA_ANSWER: &str = r#"{"data":5,"message":"Success!","state":"000"}"#;

fn cluster_ip(node: &RealNode, svc: &str) -> String {
    let ip = node.kubectl_ok(&["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"]);
    format!("{}:8080", ip.trim())
}

/// How many times the agent has logged a programmed cluster state (maps and proxy routes swapped
/// together).
fn programmed(node: &RealNode) -> usize {
    let out = node.kubectl(&[
        "-n",
        "meshpath-system",
        "logs",
        "ds/meshpath",
        "-c",
        "agent",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("programmed") && l.contains("frontends"))
        .count()
}

/// Applies `files` (relative to the repository) and waits until the agent programmed something
/// newer and then nothing new for a second (two objects may arrive in two passes).
fn apply_programmed(node: &RealNode, files: &[&str]) {
    let mark = programmed(node);
    for f in files {
        let path = repo().join(f);
        node.kubectl_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
    }
    let newer = poll(Duration::from_secs(30), || {
        (programmed(node) > mark).then_some(())
    });
    assert!(
        newer.is_some(),
        "the agent programmed nothing after {files:?}"
    );
    let mut last = programmed(node);
    let quiet = poll(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_secs(1));
        let now = programmed(node);
        let same = now == last;
        last = now;
        same.then_some(())
    });
    assert!(
        quiet.is_some(),
        "the agent kept programming after {files:?}"
    );
}

/// (v1, v2) among `n` gateway answers; every answer must be a 200 from one of them.
fn gateway_versions(node: &RealNode, gateway: &str, n: u32) -> (usize, usize) {
    let answers = node.requests(gateway, "/tmp/get-gateway", n, 20);
    let mut v = (0, 0);
    for a in &answers {
        match a {
            Ok((200, b)) if b.contains("springboot app V1") => v.0 += 1,
            Ok((200, b)) if b.contains("springboot app V2") => v.1 += 1,
            other => panic!("gateway answer: {other:?}"),
        }
    }
    assert_eq!(v.0 + v.1, n as usize, "answers: {answers:?}");
    v
}

/// A multipart/form-data POST of `png` as the form field `img`, as the seed's
/// `curl -F "img=@math.jfif;type=image/jpeg"` sends it.
fn captcha_request(png: &[u8]) -> Vec<u8> {
    let boundary = "meshpath-seed-boundary-7d1e";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"img\"; filename=\"math.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(png);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut req = format!(
        "POST /anticaptcha/yk122 HTTP/1.0\r\nHost: golang-app-gateway-svc\r\n\
         accept: application/json\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

pub fn seed_mesh_routes(node: &RealNode) -> MeshRun {
    let gateway = cluster_ip(node, GATEWAY);
    node.put(
        "/tmp/get-gateway",
        b"GET / HTTP/1.0\r\nHost: golang-app-gateway-svc\r\n\r\n",
    );

    // routes.yaml: each Service to itself through the proxy, which balances each request over
    // v1 and v2. A keep-alive connection the gateway opened before it may still go straight to
    // one pod, so the split is counted on a batch after both versions have answered.
    let t0 = Instant::now();
    apply_programmed(node, &["examples/seed/artifacts/mesh/routes.yaml"]);
    let mut last = (0, 0);
    let both = poll(Duration::from_secs(60), || {
        last = gateway_versions(node, &gateway, 40);
        (last.0 > 0 && last.1 > 0).then_some(last)
    });
    both.unwrap_or_else(|| panic!("gateway answers with routes.yaml: {last:?}"));
    let steered = t0.elapsed();
    // 40 requests over the two pods: v1 within 5..=35, which a fair random pick (Binomial(40,
    // 0.5), 20 ± 3.2) leaves only beyond 5σ; the proxy's default policy (least request, as
    // Istio's) gave exactly 20 and 20 in every run so far.
    let balanced = gateway_versions(node, &gateway, 40);
    assert!(
        (5..=35).contains(&balanced.0),
        "v1 share of 40 through the proxy with routes.yaml: {balanced:?}"
    );
    let status = node.kubectl_ok(&[
        "exec",
        "-n",
        "meshpath-system",
        "ds/meshpath",
        "-c",
        "agent",
        "--",
        "meshpath",
        "status",
    ]);
    let springboot = cluster_ip(node, "springboot-app-svc");
    assert!(
        status.contains(springboot.split(':').next().expect("ip")),
        "meshpath status lacks springboot-app-svc {springboot}:\n{status}"
    );

    // The seed's captcha upload: five marks drawn, five counted; through the gateway and then
    // directly to the Python app, both Services steered to the proxy.
    let marks: Vec<(u32, u32, u32, u32)> = (0..5).map(|i| (6 + i * 14, 9, 8, 12)).collect();
    node.put(
        "/tmp/post-captcha",
        &captcha_request(&png::with_marks(80, 30, &marks)),
    );
    let mut captcha = Vec::new();
    for addr in [
        gateway.clone(),
        cluster_ip(node, "python-app-anticaptcha-svc"),
    ] {
        let answer = node.requests(&addr, "/tmp/post-captcha", 1, 20).remove(0);
        match answer {
            Ok((200, body)) if body.trim_end() == CAPTCHA_ANSWER => {
                captcha.push(body.trim_end().to_owned())
            }
            other => {
                for app in ["golang-app-gateway-v1", "python-app-anticaptcha-v1"] {
                    let out = node.kubectl(&["logs", &format!("deploy/{app}"), "--tail=10"]);
                    eprintln!("--- {app} ---\n{}", String::from_utf8_lossy(&out.stdout));
                }
                let agent = node.kubectl(&[
                    "-n",
                    "meshpath-system",
                    "logs",
                    "ds/meshpath",
                    "-c",
                    "agent",
                    "--tail=20",
                ]);
                eprintln!("--- agent ---\n{}", String::from_utf8_lossy(&agent.stdout));
                panic!("captcha upload to {addr}: {other:?}")
            }
        }
    }

    // The seed's weighted routing: 20 % v1, 80 % v2. 100 requests: v1 is Binomial(100, 0.2),
    // 20 ± 4; 5σ either side is 0..=40, and 50/50 balancing would give 50 ± 5.
    apply_programmed(
        node,
        &[
            "examples/seed/artifacts/sample/springboot-app-subsets.yaml",
            "examples/seed/artifacts/sample/weighted-routing.yaml",
        ],
    );
    let weighted = gateway_versions(node, &gateway, 100);
    assert!(
        weighted.0 > 0 && weighted.0 <= 40,
        "v1 share of 100 with the 20/80 weights: {weighted:?}"
    );

    // Back to routes.yaml's plain route for springboot-app-svc (the walk-through's restore).
    node.kubectl_ok(&["delete", "destinationrule", "springboot-app-svc"]);
    apply_programmed(node, &["examples/seed/artifacts/mesh/routes.yaml"]);
    MeshRun {
        steered,
        balanced,
        weighted,
        captcha: (captcha.remove(0), captcha.remove(0)),
    }
}
