//! The seed's four applications (examples/seed/apps/, built by scripts/seed-apps.sh) behave as the
//! seed shows: the gateway → springboot-app v1/v2 → golang-app-data chains answer the seed's
//! bodies byte for byte, golang-app-data serves its ConfigMap file, environment and Secret and
//! follows a kubelet-style ConfigMap update, python-app-anticaptcha reads real images, and the
//! trace headers travel end to end. Plain processes on loopback ports: no privileges needed.

#[path = "seed_apps/mod.rs"]
mod apps;

use apps::{free_port, http, multipart, png, App, ConfigMapVolume, Part, Scratch};

/// The ConfigMap's file as the seed creates it, and after its 热更新 step added key3.
const CONFIG: &str = "{\n  \"key1\": \"value1\",\n  \"key2\": \"value2\"\n}\n";
const CONFIG_KEY3: &str =
    "{\n  \"key1\": \"value1\",\n  \"key3\": \"value3\",\n  \"key2\": \"value2\"\n}\n";

/// The seed's curl answers of golang-app-gateway-svc (content-length 68 and 171).
const GATEWAY_V1: &str =
    "Gateway get from upstream: [\n\n response from: springboot app V1\n\n]\n\n";
const GATEWAY_V2: &str = "Gateway get from upstream: [\n\n response from: springboot app V2, args: <data from golang-app-data: [{\n  \"key1\": \"value1\",\n  \"key3\": \"value3\",\n  \"key2\": \"value2\"\n}\n] >\n\n]\n\n";
/// The seed's curl of springboot-app-svc v2 (content-length 136).
const SPRINGBOOT_V2: &str = "response from: springboot app V2, args: <data from golang-app-data: [{\n  \"key1\": \"value1\",\n  \"key3\": \"value3\",\n  \"key2\": \"value2\"\n}\n] >\n";

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn listen(port: u16) -> (&'static str, String) {
    ("LISTEN_ADDR", format!("127.0.0.1:{port}"))
}

/// golang-app-data with the seed's ConfigMap (file and env) and Secret (file and env).
fn data_app(dir: &Scratch, config: &str) -> (App, ConfigMapVolume) {
    let volume = ConfigMapVolume::new(dir.0.join("config"), config);
    let secret = dir.0.join("foo");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("username"), "admin").unwrap();
    std::fs::write(secret.join("password"), "admin").unwrap();
    let port = free_port();
    let env = [
        listen(port),
        ("CONFIG_FILE", volume.file().display().to_string()),
        ("SECRET_DIR", secret.display().to_string()),
        ("CONFIG_VALUE1", "42".into()),
        ("CONFIG_VALUE2", "foo".into()),
        ("USERNAME", "admin".into()),
    ];
    let app = App::start("golang-app-data", "golang-app-data", port, &env, &dir.0);
    (app, volume)
}

fn springboot(dir: &Scratch, version: &str, data: &App) -> App {
    let port = free_port();
    let env = [
        ("APP_VERSION", version.to_string()),
        ("SERVER_ADDRESS", "127.0.0.1".to_string()),
        ("SERVER_PORT", port.to_string()),
        ("DATA_URL", format!("http://{}", data.addr)),
    ];
    let label = format!("springboot-app-{version}");
    App::start("springboot-app", &label, port, &env, &dir.0)
}

fn gateway(dir: &Scratch, label: &str, springboot: &str, anticaptcha: &str) -> App {
    let port = free_port();
    let env = [
        listen(port),
        ("SPRINGBOOT_URL", springboot.to_string()),
        ("ANTICAPTCHA_URL", anticaptcha.to_string()),
    ];
    App::start("golang-app-gateway", label, port, &env, &dir.0)
}

#[test]
fn gateway_springboot_data_chains_answer_the_seed_bodies_and_carry_trace_headers() {
    let dir = Scratch::new("chain");
    let (data, _volume) = data_app(&dir, CONFIG_KEY3);
    // Spring Boot starts slowly: both versions at once.
    let (v1, v2) = std::thread::scope(|s| {
        let v1 = s.spawn(|| springboot(&dir, "v1", &data));
        let v2 = s.spawn(|| springboot(&dir, "v2", &data));
        (v1.join().unwrap(), v2.join().unwrap())
    });
    let unused = url(free_port());
    let gw1 = gateway(
        &dir,
        "gateway-to-v1",
        &format!("http://{}", v1.addr),
        &unused,
    );
    let gw2 = gateway(
        &dir,
        "gateway-to-v2",
        &format!("http://{}/", v2.addr),
        &unused,
    );

    let r = http(v1.addr, "GET", "/", &[], b"").unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "response from: springboot app V1\n".into())
    );
    let r = http(v2.addr, "GET", "/", &[], b"").unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, SPRINGBOOT_V2.into()),
        "{}",
        v2.logs()
    );
    assert_eq!(r.body.len(), 136, "the seed's content-length");

    let r = http(gw1.addr, "GET", "/", &[], b"").unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, GATEWAY_V1.into()),
        "{}",
        gw1.logs()
    );
    assert_eq!(r.header("content-length"), Some("68"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let r = http(gw2.addr, "GET", "/", &[], b"").unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, GATEWAY_V2.into()),
        "{}",
        gw2.logs()
    );
    assert_eq!(r.header("content-length"), Some("171"));

    // The seed's trace headers, sent to the gateway, reach golang-app-data through springboot v2.
    let id = format!(
        "{:016x}",
        std::process::id() as u64 * 0x9E37_79B9 + free_port() as u64
    );
    let traceid = format!("{id}{id}");
    let b3 = format!("{traceid}-{id}-1-a1b2c3d4e5f60718");
    let sent = [
        ("x-request-id", format!("req-{id}")),
        ("x-b3-traceid", traceid.clone()),
        ("x-b3-spanid", id.clone()),
        ("x-b3-parentspanid", "a1b2c3d4e5f60718".to_string()),
        ("x-b3-sampled", "1".to_string()),
        ("x-b3-flags", "0".to_string()),
        ("x-ot-span-context", format!("{traceid};{id};0;cs")),
        ("b3", b3),
    ];
    let sent: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = http(gw2.addr, "GET", "/", &sent, b"").unwrap();
    assert_eq!((r.status, r.text()), (200, GATEWAY_V2.into()));
    for app in [&gw2, &v2, &data] {
        let line = app.wait_logged_trace(&sent);
        assert_eq!(
            line["trace"].as_object().unwrap().len(),
            sent.len(),
            "{line}"
        );
    }
    let r = http(gw1.addr, "GET", "/", &sent, b"").unwrap();
    assert_eq!(r.status, 200);
    v1.wait_logged_trace(&sent);
    // Without trace headers nobody invents any: the mesh's proxy does that.
    assert!(data.request_log()[0]["trace"]
        .as_object()
        .unwrap()
        .is_empty());
}

#[test]
fn data_service_serves_configmap_env_and_secret_and_follows_a_configmap_update() {
    let dir = Scratch::new("data");
    let (data, mut volume) = data_app(&dir, CONFIG);

    let r = http(data.addr, "GET", "/", &[], b"").unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, CONFIG.into()),
        "{}",
        data.logs()
    );
    let env = http(data.addr, "GET", "/env", &[], b"").unwrap().json();
    let want = serde_json::json!({
        "CONFIG_VALUE1": "42",
        "CONFIG_VALUE2": "foo",
        "USERNAME": "admin",
        "secret_username": "admin",
        "config": {"key1": "value1", "key2": "value2"},
    });
    assert_eq!(env, want);

    // The seed's 热更新: key3 added to the ConfigMap; the kubelet swaps `..data`.
    volume.update(CONFIG_KEY3);
    let r = http(data.addr, "GET", "/", &[], b"").unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, CONFIG_KEY3.into()),
        "{}",
        data.logs()
    );
    let env = http(data.addr, "GET", "/env", &[], b"").unwrap().json();
    assert_eq!(env["config"]["key3"], "value3");
    // Environment from the ConfigMap does not change without a restart, as the seed says.
    assert_eq!(env["CONFIG_VALUE1"], "42");

    // A second update, and one that empties the key.
    volume.update(CONFIG);
    assert_eq!(
        http(data.addr, "GET", "/", &[], b"").unwrap().text(),
        CONFIG
    );
    volume.update("{}\n");
    assert_eq!(
        http(data.addr, "GET", "/", &[], b"").unwrap().text(),
        "{}\n"
    );
}

#[test]
fn anticaptcha_reads_uploaded_images_directly_and_through_the_gateway() {
    let dir = Scratch::new("anticaptcha");
    let port = free_port();
    let captcha = App::start(
        "python-app-anticaptcha",
        "anticaptcha",
        port,
        &[listen(port)],
        &dir.0,
    );
    let gw = gateway(&dir, "gateway", &url(free_port()), &url(port));

    let marks =
        |n: u32| -> Vec<(u32, u32, u32, u32)> { (0..n).map(|i| (6 + i * 14, 9, 8, 12)).collect() };
    let five = png::with_marks(80, 30, &marks(5));
    let three = png::with_marks(80, 30, &marks(3));
    let post = |to: &App, parts: &[Part], trace: &[(&str, &str)]| {
        let (ctype, body) = multipart(parts);
        let mut headers = vec![
            ("Content-Type", ctype.as_str()),
            ("accept", "application/json"),
        ];
        headers.extend_from_slice(trace);
        http(to.addr, "POST", "/anticaptcha/yk122", &headers, &body).unwrap()
    };

    // The seed's request (`-F "img=@math.jfif;type=image/jpeg"`) and answer, here for an image
    // of five marks.
    let trace = [
        ("x-request-id", "seed-apps-anticaptcha"),
        ("x-b3-traceid", "0af7651916cd43dd8448eb211c80319c"),
    ];
    for to in [&captcha, &gw] {
        let r = post(to, &[("img", "math.png", "image/png", &five)], &trace);
        assert_eq!(
            (r.status, r.text()),
            (
                200,
                r#"{"data":5,"message":"Success!","state":"000"}"#.into()
            ),
            "{}",
            captcha.logs()
        );
    }
    captcha.wait_logged_trace(&trace);
    let r = post(&gw, &[("img", "math.png", "image/png", &three)], &[]);
    assert_eq!(
        r.json()["data"],
        3,
        "the answer is computed from the pixels"
    );

    // A form without `img`, an `img` that is text, one that only starts like a PNG.
    let mut truncated = five.clone();
    truncated.truncate(40);
    let cases: [(&str, Vec<Part>); 3] = [
        (
            "missing part",
            vec![("file", "math.png", "image/png", &five)],
        ),
        (
            "not an image",
            vec![("img", "math.jfif", "image/jpeg", b"hello, not a picture\n")],
        ),
        (
            "truncated PNG",
            vec![("img", "math.png", "image/png", &truncated)],
        ),
    ];
    for (what, parts) in cases {
        for to in [&captcha, &gw] {
            let r = post(to, &parts, &[]);
            assert_eq!(r.status, 400, "{what} via {}: {}", to.name, r.text());
            assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
            let v = r.json();
            assert_eq!(
                (v["state"].as_str(), v["data"].is_null()),
                (Some("400"), true),
                "{what}: {v}"
            );
            assert!(
                v["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {v}"
            );
        }
    }
}
