//! A real Jaeger (v2, all-in-one, in-memory storage) for the privileged tests: started by the
//! test on free loopback ports of the test's own network namespace (where the agent, and so its
//! span exporter, runs), with its config in a per-run directory, and killed by its pid on drop.
//! The binary comes from `MESHPATH_JAEGER=$(bash scripts/jaeger.sh)`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::apps::http;
use meshpath_tests::wait::poll;

/// The config the proxy's in-process Jaeger test uses: every port from the environment.
const CONFIG: &str = include_str!("../../../agent/proxy/src/tests/jaeger/jaeger.yaml");

pub struct Jaeger {
    child: Child,
    dir: PathBuf,
    /// The query API (`/api/services`, `/api/traces`).
    pub query: SocketAddr,
    /// The Zipkin v2 receiver (`/api/v2/spans`).
    pub zipkin: SocketAddr,
    log: PathBuf,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        // The child we spawned, by its pid (Child::kill sends SIGKILL to that pid only).
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Prints the harness's `SKIP <test>: <reason>` line straight to the process's stdout (libtest
/// captures `println!` of a passing test, and `cargo xtask test` counts these lines).
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", meshpath_tests::skip_line(test, reason));
    let _ = out.flush();
}

/// A free loopback port (bound then released; Jaeger binds it a moment later).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    l.local_addr().expect("local addr").port()
}

impl Jaeger {
    /// Starts Jaeger and waits for its query API; `None` (after printing the harness's skip line
    /// for `test`) when `MESHPATH_JAEGER` is unset.
    pub fn start(test: &str, run: &str) -> Option<Jaeger> {
        let Some(bin) = std::env::var_os("MESHPATH_JAEGER") else {
            skip(
                test,
                "MESHPATH_JAEGER is not set (MESHPATH_JAEGER=$(bash scripts/jaeger.sh))",
            );
            return None;
        };
        let dir = std::env::temp_dir().join(format!("{run}-jaeger"));
        std::fs::create_dir_all(&dir).expect("jaeger run dir");
        let config = dir.join("jaeger.yaml");
        std::fs::write(&config, CONFIG).expect("jaeger config");
        let log = dir.join("jaeger.log");
        let ports = [free_port(), free_port(), free_port(), free_port()];
        let child = Command::new(&bin)
            .arg("--config")
            .arg(format!("file:{}", config.display()))
            .env("JAEGER_QUERY_PORT", ports[0].to_string())
            .env("JAEGER_QUERY_GRPC_PORT", ports[1].to_string())
            .env("JAEGER_ZIPKIN_PORT", ports[2].to_string())
            .env("JAEGER_OTLP_PORT", ports[3].to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("jaeger log"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", PathBuf::from(&bin).display()));
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut j = Jaeger {
            child,
            dir,
            query: at(ports[0]),
            zipkin: at(ports[2]),
            log,
        };
        let up = poll(Duration::from_secs(30), || {
            if let Ok(Some(status)) = j.child.try_wait() {
                panic!("jaeger exited ({status}):\n{}", j.log());
            }
            j.get("/api/services").filter(|(s, _)| *s == 200)
        });
        assert!(
            up.is_some(),
            "jaeger's query API did not come up:\n{}",
            j.log()
        );
        Some(j)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Option<(u16, Value)> {
        let r = http(self.query, "GET", path, &[], b"").ok()?;
        Some((r.status, serde_json::from_slice(&r.body).ok()?))
    }

    /// `/api/traces?service=<service>`'s traces once there are `count` of them, each with
    /// `spans` spans (the exporter batches, Jaeger's pipeline batches: spans arrive late).
    pub fn traces(&self, service: &str, count: usize, spans: usize) -> Vec<Value> {
        let mut last = Value::Null;
        let got = poll(Duration::from_secs(30), || {
            let (_, v) = self
                .get(&format!("/api/traces?service={service}&limit=100"))
                .filter(|(s, _)| *s == 200)?;
            let traces = v["data"].as_array().cloned().unwrap_or_default();
            last = v;
            let complete = traces
                .iter()
                .all(|t| t["spans"].as_array().map_or(0, Vec::len) == spans);
            (traces.len() == count && complete).then_some(traces)
        });
        got.unwrap_or_else(|| {
            panic!("jaeger has no {count} traces of {service} with {spans} spans each: {last:#}")
        })
    }
}

/// What Jaeger's API says about one span, flattened for asserts.
#[derive(Debug)]
pub struct SpanView {
    pub span_id: String,
    pub operation: String,
    pub service: String,
    /// `CHILD_OF` references' span ids.
    pub parents: Vec<String>,
    pub start_us: u64,
    pub duration_us: u64,
    pub tags: Vec<(String, String)>,
}

impl SpanView {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The spans of one trace of `/api/traces`, with each span's process service name resolved.
pub fn spans(trace: &Value) -> Vec<SpanView> {
    let str_of = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let spans = trace["spans"].as_array().cloned().unwrap_or_default();
    spans
        .iter()
        .map(|s| SpanView {
            span_id: str_of(&s["spanID"]),
            operation: str_of(&s["operationName"]),
            service: str_of(&trace["processes"][str_of(&s["processID"])]["serviceName"]),
            parents: s["references"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["refType"] == "CHILD_OF")
                .map(|r| str_of(&r["spanID"]))
                .collect(),
            start_us: s["startTime"].as_u64().unwrap_or_default(),
            duration_us: s["duration"].as_u64().unwrap_or_default(),
            tags: s["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    (
                        str_of(&t["key"]),
                        t["value"].to_string().trim_matches('"').into(),
                    )
                })
                .collect(),
        })
        .collect()
}
