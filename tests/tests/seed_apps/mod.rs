//! Runs the seed's four applications (built by scripts/seed-apps.sh) as plain processes on
//! loopback, each on its own port, and talks HTTP/1.1 to them with a few lines of std.
#![allow(dead_code)] // helpers for tests/seed_apps.rs

pub mod png;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Spring Boot on two shared cores takes seconds to start; Go and Python well under one.
pub const START_TIMEOUT: Duration = Duration::from_secs(180);

/// The launcher of each app (`<cache>/<app>/<hash>/bin/<app>`), built once per test binary by
/// scripts/seed-apps.sh; a warm cache makes that a check of a second or two.
pub fn launcher(app: &str) -> PathBuf {
    static BUILT: OnceLock<Result<HashMap<String, PathBuf>, String>> = OnceLock::new();
    let built = BUILT.get_or_init(build);
    match built {
        Ok(paths) => paths
            .get(app)
            .cloned()
            .unwrap_or_else(|| panic!("scripts/seed-apps.sh printed no line for {app}")),
        Err(e) => panic!("{e}"),
    }
}

fn build() -> Result<HashMap<String, PathBuf>, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(repo.join("scripts/seed-apps.sh"))
        .current_dir(&repo)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running scripts/seed-apps.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/seed-apps.sh could not build the seed's apps ({}); its messages are above \
             (a missing toolchain it could not install says so)",
            out.status
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let paths: HashMap<String, PathBuf> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("seed-app "))
        .filter_map(|l| l.split_once(' '))
        .map(|(app, path)| (app.to_string(), PathBuf::from(path)))
        .collect();
    Ok(paths)
}

/// A scratch directory removed on drop, unique to this process and call.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "meshpath-seed-apps-{what}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("creating a scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port: bound, read and released (the app binds it a moment later).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    l.local_addr().unwrap().port()
}

/// One running app; killed (by its pid) and reaped on drop. stdout and stderr go to files.
pub struct App {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl App {
    /// Starts `app` with `env` (on top of PATH and HOME only) and waits until it answers HTTP.
    pub fn start(app: &str, label: &str, port: u16, env: &[(&str, String)], dir: &Path) -> App {
        let stdout = dir.join(format!("{label}.out"));
        let stderr = dir.join(format!("{label}.err"));
        let mut cmd = Command::new(launcher(app));
        cmd.env_clear()
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"));
        for var in ["PATH", "HOME"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {app}: {e}"));
        let mut a = App {
            name: label.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            stdout,
            stderr,
        };
        a.wait_ready();
        a
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the child") {
                panic!(
                    "{} exited ({status}) before answering:\n{}",
                    self.name,
                    self.logs()
                );
            }
            // Any HTTP answer (a 404 included) means the listener is up and serving.
            if http(self.addr, "GET", "/", &[], b"").is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer on {} within {START_TIMEOUT:?}:\n{}",
                self.name,
                self.addr,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!(
            "--- {} stdout\n{}--- {} stderr\n{err}",
            self.name,
            self.stdout(),
            self.name
        )
    }

    /// The per-request JSON lines the app printed (other stdout lines skipped).
    pub fn request_log(&self) -> Vec<serde_json::Value> {
        self.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("trace").is_some())
            .collect()
    }

    /// Waits until the app has logged a request whose trace headers include all of `want`.
    pub fn wait_logged_trace(&self, want: &[(&str, &str)]) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let hit = self.request_log().into_iter().find(|line| {
                want.iter()
                    .all(|(k, v)| line["trace"][*k].as_str() == Some(*v))
            });
            if let Some(line) = hit {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged trace headers {want:?}:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer: status, lower-cased header names, body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {self:?} {}", self.text()))
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| std::io::Error::other(format!("malformed answer: {raw:?}")))
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// One multipart/form-data part: name, filename, content type, bytes.
pub type Part<'a> = (&'a str, &'a str, &'a str, &'a [u8]);

/// A multipart/form-data body of `parts`, and its Content-Type header value.
pub fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "meshpath-seed-apps-7d1c3f";
    let mut body = Vec::new();
    for (name, filename, ctype, data) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{filename}\"\r\nContent-Type: {ctype}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A ConfigMap volume laid out as the kubelet does: `<dir>/config-data.json` is a symlink to
/// `..data/config-data.json`, and `..data` a symlink to a timestamped directory holding the file.
pub struct ConfigMapVolume {
    pub dir: PathBuf,
    generation: u32,
}

impl ConfigMapVolume {
    pub fn new(dir: PathBuf, content: &str) -> ConfigMapVolume {
        std::fs::create_dir_all(&dir).expect("configmap dir");
        let mut v = ConfigMapVolume { dir, generation: 0 };
        v.update(content);
        std::os::unix::fs::symlink("..data/config-data.json", v.file()).expect("file symlink");
        v
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join("config-data.json")
    }

    /// The kubelet's atomic update: a new timestamped directory, a new `..data_tmp` symlink to
    /// it renamed over `..data`, then the old directory removed.
    pub fn update(&mut self, content: &str) {
        self.generation += 1;
        let ts = format!(
            "..2026_01_17_09_13_{:02}.{}",
            self.generation, self.generation
        );
        std::fs::create_dir(self.dir.join(&ts)).expect("timestamped dir");
        std::fs::write(self.dir.join(&ts).join("config-data.json"), content).expect("write");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).expect("..data_tmp symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("re-pointing ..data");
        if self.generation > 1 {
            let old = format!(
                "..2026_01_17_09_13_{:02}.{}",
                self.generation - 1,
                self.generation - 1
            );
            std::fs::remove_dir_all(self.dir.join(old)).expect("removing the old generation");
        }
    }
}
