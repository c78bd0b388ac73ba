//! The seed's Kubernetes sections: the captcha service behind the gateway, ExternalName,
//! scaling to zero, the ConfigMap's hot update and the Secret.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{bodies, Verdict, Walkthrough};

#[path = "../../tests/seed_apps/png.rs"]
mod png;

const GATEWAY: &str = "golang-app-gateway-svc";
const DATA: &str = "golang-app-data-svc";

/// 基础环境配置: the seed's captcha POST (multipart `img`), here through the gateway, with an
/// image of five marks: the service answers `{"data":5,...}` as the seed's did for math.jfif.
pub(super) fn anticaptcha(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    let marks: Vec<(u32, u32, u32, u32)> = (0..5).map(|i| (6 + i * 14, 9, 8, 12)).collect();
    let image = w.work_dir().join("math.png");
    std::fs::write(&image, png::with_marks(80, 30, &marks))?;
    let url = format!("http://{}:8080/anticaptcha/yk122", w.vip(GATEWAY)?);
    let form = format!("img=@{};type=image/png", image.display());
    let shown = format!("-X POST {url} -H 'accept: application/json' -H 'Content-Type: multipart/form-data' -F 'img=@math.png;type=image/png'");
    let out = w.curl(
        &shown,
        &[
            "-X",
            "POST",
            &url,
            "-H",
            "accept: application/json",
            "-H",
            "Content-Type: multipart/form-data",
            "-F",
            &form,
        ],
    )?;
    let want = r#"{"data":5,"message":"Success!","state":"000"}"#;
    v.check(out.trim_end() == want, format!("the answer is {want}"));
    v.figure = format!("{} (five marks drawn)", out.trim_end());
    Ok(())
}

/// 外部命名服务: `my-db-service.prod` answers with a CNAME to its externalName, through the
/// agent's DNS (the cluster's resolver address is captured in the kernel).
pub(super) fn externalname(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    let resolver = w.vip("kube-dns")?.to_string();
    let dig = |name: &str| -> Result<String> {
        let at = format!("@{resolver}");
        w.say(&format!("$ dig {at} {name} +noall +answer"));
        let mut cmd = w.node().client().command("dig")?;
        cmd.args([
            at.as_str(),
            name,
            "+noall",
            "+answer",
            "+time=3",
            "+tries=2",
        ]);
        let out = crate::run_until(cmd, Duration::from_secs(20), &|| false)?;
        for line in out.stdout.lines() {
            w.say(&format!("  {line}"));
        }
        Ok(out.stdout)
    };
    let ext = dig("my-db-service.prod.svc.cluster.local")?;
    let cname = ext.lines().any(|l| {
        l.starts_with("my-db-service.prod.svc.cluster.local.")
            && l.contains("CNAME")
            && l.trim_end().ends_with("my.database.example.com.")
    });
    v.check(cname, "my-db-service.prod: CNAME my.database.example.com.");
    let svc = dig("springboot-app-svc.default.svc.cluster.local")?;
    let vip = w.vip("springboot-app-svc")?;
    let a = svc
        .lines()
        .any(|l| l.contains(" A") && l.trim_end().ends_with(vip));
    v.check(a, format!("springboot-app-svc: A {vip} (its ClusterIP)"));
    v.figure = format!("my-db-service.prod -> CNAME my.database.example.com: {cname}; springboot-app-svc -> A {vip}: {a}");
    Ok(())
}

/// Polls `curl -i url` until `done(answer)`; returns that answer and how long it took. Each
/// different answer on the way (status line and body) is shown once, with its time.
fn curl_until(
    w: &Walkthrough,
    url: &str,
    done: impl Fn(&str) -> bool,
    timeout: Duration,
) -> Result<(String, Duration)> {
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        let mut cmd = w.node().client().command("curl")?;
        cmd.args(["-sS", "-i", "--max-time", "10", url]);
        let out = crate::run_until(cmd, Duration::from_secs(20), &|| false)?;
        let text = out.stdout.replace('\r', "");
        let status = text.lines().next().unwrap_or("no answer");
        let body = text.split_once("\n\n").map_or("", |(_, b)| b).trim_end();
        let shown = format!("{status} {}", body.lines().next().unwrap_or(""));
        if shown != last {
            w.say(&format!(
                "  after {:>5} ms: {shown}",
                t0.elapsed().as_millis()
            ));
            last = shown;
        }
        if done(&text) {
            return Ok((text, t0.elapsed()));
        }
        if t0.elapsed() > timeout {
            bail!(
                "{url}: not the answer expected within {timeout:?}; last {text:?} {}",
                out.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 外部命名服务 (no backend): the seed's `kubectl scale --replicas=0 deployment
/// golang-app-gateway-v1`, then `curl -i golang-app-gateway-svc:8080` gets 503 from the mesh;
/// scaled back to 1, the gateway answers again.
pub(super) fn scale_to_zero(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    let url = format!("http://{}:8080/", w.vip(GATEWAY)?);
    w.kubectl(&[
        "scale",
        "--replicas=0",
        "deployment",
        "golang-app-gateway-v1",
    ])?;
    w.say(&format!("$ curl -i {url}   # every 100 ms"));
    let no_upstream =
        |t: &str| t.starts_with("HTTP/1.1 503") && t.ends_with("\n\nno healthy upstream");
    let (text, took) = curl_until(w, &url, no_upstream, Duration::from_secs(30))?;
    w.say(&format!(
        "$ curl -i {url}   # {} ms after the scale",
        took.as_millis()
    ));
    for line in text.lines() {
        w.say(&format!("  {line}"));
    }
    let body = text.split_once("\n\n").map(|(_, b)| b).unwrap_or_default();
    v.check(
        body == "no healthy upstream",
        "503 with Envoy's body `no healthy upstream` (19 bytes, as in the seed)",
    );
    w.kubectl(&[
        "scale",
        "--replicas=1",
        "deployment",
        "golang-app-gateway-v1",
    ])?;
    w.node()
        .wait_ready("default", "app=golang-app-gateway", 1, super::APP_READY)?;
    let ok = |t: &str| t.starts_with("HTTP/1.1 200");
    let (back, again) = curl_until(w, &url, ok, Duration::from_secs(30))?;
    let answered = back.contains("Gateway get from upstream");
    v.check(answered, "scaled back to 1: 200 with the gateway's body");
    w.say(&format!(
        "  (scaled back to 1: 200 again {} ms after the pod was ready)",
        again.as_millis()
    ));
    v.figure = format!(
        "replicas 0: 503 `{body}` {} ms after the scale; replicas 1: 200 again {} ms after ready",
        took.as_millis(),
        again.as_millis()
    );
    Ok(())
}

/// The ConfigMap file as golang-app-data-svc serves it now.
fn served_config(w: &Walkthrough) -> Result<String> {
    let mut cmd = w.node().client().command("curl")?;
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        &format!("http://{}:8080/", w.vip(DATA)?),
    ]);
    let out = crate::run_until(cmd, Duration::from_secs(20), &|| false)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        // Shown by the check that compares it: what went wrong instead of a file.
        Ok(format!("curl {}: {}", out.status, out.stderr.trim()))
    }
}

fn set_config(w: &Walkthrough, file: &str) -> Result<()> {
    let patch = serde_json::json!({"data": {"config-data.json": file}}).to_string();
    w.kubectl(&[
        "patch",
        "configmap",
        "golang-app-data-cm",
        "--type",
        "merge",
        "-p",
        &patch,
    ])?;
    Ok(())
}

/// 热更新: the ConfigMap gets key3; the data service's mounted file follows within seconds and
/// the chain's next v2 answer carries it (the seed's 171-byte answer).
pub(super) fn configmap(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    if w.config()? != bodies::CONFIG {
        w.say("  (the ConfigMap was edited before: back to the seed's first version)");
        set_config(w, bodies::CONFIG)?;
        if !crate::wait_until(Duration::from_secs(90), || {
            served_config(w).is_ok_and(|c| c == bodies::CONFIG)
        }) {
            bail!("the ConfigMap's original file did not come back within 90 s");
        }
    }
    let before = served_config(w)?;
    v.check(
        before == bodies::CONFIG,
        format!("before: the data service serves key1, key2 (it served {before:?})"),
    );
    let t0 = Instant::now();
    set_config(w, bodies::CONFIG_KEY3)?;
    let seen = crate::wait_until(Duration::from_secs(90), || {
        served_config(w).is_ok_and(|c| c == bodies::CONFIG_KEY3)
    });
    let took = t0.elapsed();
    v.check(seen, "the data service serves key3 within 90 s");
    w.say(&format!(
        "  (golang-app-data-svc serves key3 {:.1} s after the edit)",
        took.as_secs_f64()
    ));
    let url = format!("http://{}:8080/", w.vip("springboot-app-svc")?);
    // springboot-app v1 does not call the data service: ask until v2 answers (both take turns).
    let mut v2 = String::new();
    for _ in 0..10 {
        let mut cmd = w.node().client().command("curl")?;
        cmd.args(["-sS", "--max-time", "30", &url]);
        let out = crate::run_until(cmd, Duration::from_secs(40), &|| false)?.stdout;
        if out.contains("V2") {
            v2 = out;
            break;
        }
    }
    w.say(&format!("$ curl {url}   # until v2 answers"));
    for line in v2.lines() {
        w.say(&format!("  {line}"));
    }
    let want = bodies::springboot("v2", bodies::CONFIG_KEY3);
    v.check(
        v2 == want,
        "springboot-app v2 answers with key3 (the seed's 136 bytes)",
    );
    v.figure = format!(
        "key3 served {:.1} s after the edit; v2's answer {} bytes",
        took.as_secs_f64(),
        v2.len()
    );
    Ok(())
}

/// 使用Secret: the seed's secret-pod env and volume given to golang-app-data-v1; its `/env`
/// answer shows `USERNAME` and `/etc/foo/username` as `admin`.
pub(super) fn secret(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    let url = format!("http://{}:8080/env", w.vip(DATA)?);
    let env = || -> Result<serde_json::Value> {
        let mut cmd = w.node().client().command("curl")?;
        cmd.args(["-sS", "--max-time", "10", &url]);
        Ok(serde_json::from_str(
            &crate::run_until(cmd, Duration::from_secs(20), &|| false)?.stdout,
        )?)
    };
    let secret_env = |key: &str, name: &str| serde_json::json!({"name": name, "valueFrom": {"secretKeyRef": {"name": "mysecret", "key": key}}});
    let patch = serde_json::json!({"spec": {"template": {"spec": {
        "containers": [{"name": "golang-app-data",
            "env": [secret_env("username", "USERNAME"), secret_env("password", "PASSWORD")],
            "volumeMounts": [{"name": "foo", "mountPath": "/etc/foo", "readOnly": true}]}],
        "volumes": [{"name": "foo", "secret": {"secretName": "mysecret"}}]}}}});
    w.say("  (secret-pod.yaml's env and volume, given to golang-app-data-v1)");
    w.kubectl(&[
        "patch",
        "deployment",
        "golang-app-data-v1",
        "-p",
        &patch.to_string(),
    ])?;
    let rolled = crate::poll(Duration::from_secs(90), || {
        env()
            .ok()
            .filter(|e| e["USERNAME"] == "admin" && e["secret_username"] == "admin")
    });
    w.curl(&url, &[&url])?;
    let Some(e) = rolled else {
        v.check(false, "the rolled-out pod shows the Secret within 90 s");
        return Ok(());
    };
    v.check(true, "USERNAME=admin (env from secretKeyRef)");
    v.check(true, "/etc/foo/username = admin (secret volume)");
    v.check(
        e["CONFIG_VALUE1"] == "42" && e["CONFIG_VALUE2"] == "foo",
        "the ConfigMap env stays: 42, foo",
    );
    v.figure = format!(
        "USERNAME={}, /etc/foo/username={}, CONFIG_VALUE1={}",
        e["USERNAME"], e["secret_username"], e["CONFIG_VALUE1"]
    );
    Ok(())
}
