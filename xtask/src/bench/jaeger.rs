//! A real Jaeger (all-in-one, in-memory storage, loopback only) as the span collector of the
//! tracing scenarios: the binary `scripts/jaeger.sh` builds once into a cache (or
//! `MESHPATH_JAEGER`), run with the proxy tests' config, every port free and from the
//! environment. Stopped (killed by pid) on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::paths::workspace_root;

/// The proxy tests' Jaeger config: Zipkin and OTLP receivers, query API, memory store capped
/// at 10 000 traces (so a 100 % run cannot grow it without bound).
const CONFIG: &str = "agent/proxy/src/tests/jaeger/jaeger.yaml";

pub struct Jaeger {
    child: Child,
    /// Zipkin v2 receiver (`/api/v2/spans`).
    pub zipkin: SocketAddr,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The binary: `MESHPATH_JAEGER`, else what `scripts/jaeger.sh` prints (cached after one build).
fn binary() -> Result<String> {
    if let Ok(b) = std::env::var("MESHPATH_JAEGER") {
        return Ok(b);
    }
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/jaeger.sh"))
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/jaeger.sh")?;
    if !out.status.success() {
        bail!("scripts/jaeger.sh failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Jaeger {
    /// Starts Jaeger with its files under `dir` and waits for its query API.
    pub fn start(dir: &Path) -> Result<Jaeger> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("jaeger.yaml");
        std::fs::copy(workspace_root().join(CONFIG), &config).context("jaeger config")?;
        let ports = [free_port()?, free_port()?, free_port()?, free_port()?];
        let log = std::fs::File::create(dir.join("jaeger.log"))?;
        let child = Command::new(binary()?)
            .arg("--config")
            .arg(format!("file:{}", config.display()))
            .env("JAEGER_QUERY_PORT", ports[0].to_string())
            .env("JAEGER_QUERY_GRPC_PORT", ports[1].to_string())
            .env("JAEGER_ZIPKIN_PORT", ports[2].to_string())
            .env("JAEGER_OTLP_PORT", ports[3].to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting jaeger")?;
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let j = Jaeger {
            child,
            zipkin: at(ports[2]),
        };
        let query = at(ports[0]);
        let until = Instant::now() + Duration::from_secs(30);
        while !get_ok(query, "/api/services") {
            if Instant::now() > until {
                bail!("jaeger's query API did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(j)
    }
}

fn get_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: jaeger\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}
