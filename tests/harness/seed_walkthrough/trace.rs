//! 调用链追踪: one request through gateway → springboot-app v2 → golang-app-data. Each app
//! forwards the trace headers it got; the node proxy makes one span per hop. With Jaeger the
//! trace is read back from its query API, otherwise the headers each app logged are shown.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{Verdict, Walkthrough};

/// A minimal in-memory Jaeger on loopback, every port from the environment.
const CONFIG: &str = include_str!("../../../agent/proxy/src/tests/jaeger/jaeger.yaml");

/// `$MESHPATH_JAEGER` (`scripts/jaeger.sh` prints it) when it names a file.
pub fn jaeger_bin() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("MESHPATH_JAEGER")?);
    p.is_file().then_some(p)
}

/// A running Jaeger, killed on drop.
pub struct Jaeger {
    child: Child,
    query: u16,
    zipkin: u16,
}

impl Jaeger {
    pub fn start(bin: &Path, work: &Path) -> Result<Jaeger> {
        let config = work.join("jaeger.yaml");
        std::fs::write(&config, CONFIG)?;
        let port = crate::kube::free_port;
        let (query, grpc, zipkin, otlp) = (port()?, port()?, port()?, port()?);
        let log = std::fs::File::create(work.join("jaeger.log"))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(format!("file:{}", config.display()))
            .env("JAEGER_QUERY_PORT", query.to_string())
            .env("JAEGER_QUERY_GRPC_PORT", grpc.to_string())
            .env("JAEGER_ZIPKIN_PORT", zipkin.to_string())
            .env("JAEGER_OTLP_PORT", otlp.to_string())
            // Its own process group: a Ctrl-C at the terminal is for the walk-through.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let j = Jaeger {
            child,
            query,
            zipkin,
        };
        if !crate::wait_until(Duration::from_secs(30), || j.get("/api/services").is_ok()) {
            bail!("Jaeger's query API did not answer within 30 s");
        }
        Ok(j)
    }

    /// Where the agent sends spans (`--trace-collector`; it POSTs Zipkin v2 JSON to
    /// `/api/v2/spans` there).
    pub fn collector_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.zipkin)
    }

    /// GET `path` of the query API, parsed.
    fn get(&self, path: &str) -> Result<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.query);
        let out = Command::new("curl")
            .args(["-sSf", "--max-time", "5", &url])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("GET {url}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One span of a Jaeger trace: (span id, parent id, service, operation, µs).
type Span = (String, String, String, String, u64);

fn spans(trace: &Value) -> Vec<Span> {
    let procs = &trace["processes"];
    let mut out: Vec<Span> = trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let parent = s["references"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
                .and_then(|r| r["spanID"].as_str())
                .unwrap_or("")
                .to_string();
            let pid = s["processID"].as_str().unwrap_or("");
            (
                s["spanID"].as_str().unwrap_or("").to_string(),
                parent,
                procs[pid]["serviceName"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
                s["operationName"].as_str().unwrap_or("").to_string(),
                s["duration"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.4));
    out
}

/// The request lines of the apps' logs that carry trace `id`: (app, trace headers).
fn seen(w: &Walkthrough, id: &str) -> Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for selector in [
        "app=golang-app-gateway",
        "app=springboot-app,version=v2",
        "app=golang-app-data",
    ] {
        for pod in w.pods(selector)? {
            for line in w.requests_logged(&pod) {
                if line["trace"]["x-b3-traceid"] == id {
                    out.push((pod.clone(), line["trace"].clone()));
                }
            }
        }
    }
    Ok(out)
}

pub(super) fn trace(w: &Walkthrough, v: &mut Verdict) -> Result<()> {
    let url = format!("http://{}:8080/", w.vip("golang-app-gateway-svc")?);
    // Sampled by the client, as a traced request from outside would be; v1 does not call the
    // data service, so ask until v2 answers.
    let mut id = None;
    for _ in 0..10 {
        let mut cmd = w.node().client().command("curl")?;
        cmd.args(["-sS", "--max-time", "30", "-H", "x-b3-sampled: 1", &url]);
        let body = crate::run_until(cmd, Duration::from_secs(40), &|| false)?.stdout;
        let gw = w.pods("app=golang-app-gateway")?;
        let last = gw.iter().filter_map(|p| w.requests_logged(p).pop()).next();
        if body.contains("V2") {
            id = last.and_then(|l| l["trace"]["x-b3-traceid"].as_str().map(str::to_string));
            break;
        }
    }
    w.say(&format!(
        "$ curl -H 'x-b3-sampled: 1' {url}   # until springboot-app v2 answers"
    ));
    let id = id.context("no v2 answer with a trace id in the gateway's log")?;
    w.say(&format!(
        "  trace id {id} (made by the node proxy on the first hop)"
    ));
    let apps = seen(w, &id)?;
    for (pod, headers) in &apps {
        w.say(&format!("  {pod} saw {headers}"));
    }
    let span_ids: std::collections::BTreeSet<&str> = apps
        .iter()
        .filter_map(|(_, h)| h["x-b3-spanid"].as_str())
        .collect();
    v.check(
        apps.len() == 3,
        format!(
            "gateway, springboot v2 and data each logged the trace ({} lines)",
            apps.len()
        ),
    );
    v.check(
        span_ids.len() == apps.len(),
        "each hop has its own span id (the proxy made a span per hop)",
    );
    let rid: std::collections::BTreeSet<&str> = apps
        .iter()
        .filter_map(|(_, h)| h["x-request-id"].as_str())
        .collect();
    v.check(rid.len() == 1, "one x-request-id across the chain");
    v.figure = format!(
        "trace {id}: {} apps saw it, {} span ids",
        apps.len(),
        span_ids.len()
    );

    let Some(j) = w.jaeger() else {
        w.say("  (no Jaeger: MESHPATH_JAEGER=$(bash scripts/jaeger.sh) reads the trace back from Jaeger)");
        return Ok(());
    };
    let found = crate::poll(Duration::from_secs(15), || {
        let t = j.get(&format!("/api/traces/{id}")).ok()?;
        let s = spans(&t["data"][0]);
        (s.len() >= 3).then_some(s)
    });
    w.say(&format!(
        "$ curl 127.0.0.1:{}/api/traces/{id}   # Jaeger's query API",
        j.query
    ));
    let Some(s) = found else {
        v.check(false, "Jaeger has the trace's three spans within 15 s");
        return Ok(());
    };
    for (span, parent, service, op, us) in &s {
        let parent = if parent.is_empty() {
            "(root)".to_string()
        } else {
            format!("child of {parent}")
        };
        w.say(&format!(
            "  {span}  {service:<28} {op:<56} {us:>7} µs  {parent}"
        ));
    }
    let ids: Vec<&str> = s.iter().map(|x| x.0.as_str()).collect();
    let chained = s.iter().filter(|x| ids.contains(&x.1.as_str())).count();
    v.check(
        s.len() == 3 && chained == 2,
        "Jaeger: three spans, each hop a child of the one before",
    );
    v.figure = format!(
        "{}; Jaeger: {} spans, {chained} children",
        v.figure,
        s.len()
    );
    Ok(())
}
