//! The node of one real-node test run (scripts/node.sh) and the test's ways into it: kubectl,
//! the node's scripts, and HTTP requests from the client pod.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use meshpath_tests::skip_line;

pub fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

pub fn skip(reason: &str) {
    let current = std::thread::current();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        skip_line(current.name().unwrap_or("<test>"), reason)
    );
    let _ = out.flush();
}

/// The node of one test run; `scripts/node.sh down` when dropped, also while a failure unwinds.
pub struct RealNode {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

impl RealNode {
    pub fn script(&self, script: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("scripts").join(script))
            .args(args)
            .env("MESHPATH_NODE_DIR", &self.dir)
            .stdin(Stdio::null());
        // The agent the image is made of: the one `cargo xtask test` has just built.
        if let Some(bin) = std::env::var_os("MESHPATH_BIN") {
            cmd.env("MESHPATH_AGENT_BIN", bin);
        }
        cmd.output().expect("running bash")
    }

    /// A variable of the node's state file (scripts/lib/node-proc.sh writes `NAME=value`).
    pub fn state(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join("state")).expect("node state file");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing from the node's state"))
            .to_owned()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        let bins = std::env::var_os("MESHPATH_KUBE_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                repo()
                    .join("target/kube")
                    .join(meshpath_tests::kube::KUBE_VERSION)
            });
        Command::new(bins.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running kubectl")
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "\"$0\" --kubeconfig {} apply -f -",
                self.kubeconfig.display()
            ))
            .arg(kubectl_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("writing manifest");
        let out = child.wait_with_output().expect("kubectl apply");
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An HTTP/1.0 GET of `/` at `addr` (Host: web) from the client pod: the body of a 200,
    /// or the error.
    pub fn get(&self, addr: &str) -> Result<String, String> {
        match self.http(addr, "/", 1)? {
            (200, body) => Ok(body),
            (status, body) => Err(format!("{status}: {body:?}")),
        }
    }

    /// An HTTP/1.0 GET of `path` at `addr` (Host: web) from the client pod, with busybox's
    /// `nc` through `kubectl exec` (the kubelet's and containerd's streaming): the status and
    /// body, or the error. (Debian's busybox-static `wget` segfaults, on the host too.) The
    /// request's write side stays open until nc exits or `hold` seconds pass, as nc half-closes
    /// at the end of its input and Go's server cancels a request whose client half-closed.
    pub fn http(&self, addr: &str, path: &str, hold: u32) -> Result<(u16, String), String> {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let script = format!(
            "f=/tmp/nc-done.$$; rm -f $f; \
             (printf 'GET {path} HTTP/1.0\\r\\nHost: web\\r\\n\\r\\n'; i=0; \
              while [ $i -lt {} ] && [ ! -e $f ]; do usleep 100000; i=$((i+1)); done) | \
             (nc -w {} {host} {port}; s=$?; touch $f; exit $s); s=$?; rm -f $f; exit $s",
            hold * 10,
            hold + 2
        );
        let out = self.kubectl(&["exec", "client", "--", "sh", "-c", &script]);
        let response = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = response
            .split_once("\r\n\r\n")
            .and_then(|(head, body)| Some((head.split_whitespace().nth(1)?.parse().ok()?, body)));
        match status {
            Some((status, body)) if out.status.success() => Ok((status, body.to_owned())),
            _ => Err(format!(
                "{}: {response:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
}

impl RealNode {
    /// Writes `bytes` to `path` in the client pod, and checks its size there: a request file cut
    /// short would leave the server waiting for the rest of its body and look like a hung
    /// server. A short file is reported and written again, up to three times.
    pub fn put(&self, path: &str, bytes: &[u8]) {
        let mut sizes = Vec::new();
        for _ in 0..3 {
            self.put_once(path, bytes);
            let size = self.kubectl_ok(&[
                "exec",
                "client",
                "--",
                "sh",
                "-c",
                &format!("wc -c < {path}"),
            ]);
            if size.trim() == bytes.len().to_string() {
                return;
            }
            eprintln!(
                "real node: {path} in the client pod has {} of {} bytes; writing it again",
                size.trim(),
                bytes.len()
            );
            sizes.push(size.trim().to_owned());
        }
        panic!(
            "{path} in the client pod: {sizes:?} bytes of {}",
            bytes.len()
        );
    }

    fn put_once(&self, path: &str, bytes: &[u8]) {
        let mut child = Command::new(kubectl_path())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "exec",
                "-i",
                "client",
                "--",
                "sh",
                "-c",
                &format!("cat > {path}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl exec -i");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(bytes)
            .expect("writing to the pod");
        let out = child.wait_with_output().expect("kubectl exec -i");
        assert!(
            out.status.success(),
            "writing {path} in the client pod: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `n` times, the HTTP request in the client pod's file `request` sent to `addr` over a new
    /// connection, one after the other in one `kubectl exec` (one exec per request would cost
    /// more than the requests): each the status and body, or what nc printed. The write side is
    /// held open as in [`RealNode::http`], up to `hold` seconds per request.
    pub fn requests(
        &self,
        addr: &str,
        request: &str,
        n: u32,
        hold: u32,
    ) -> Vec<Result<(u16, String), String>> {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let script = format!(
            "req() {{ f=/tmp/nc-done.$$; rm -f $f; \
               (cat {request}; i=0; \
                while [ $i -lt {} ] && [ ! -e $f ]; do usleep 100000; i=$((i+1)); done) | \
               (nc -w {} {host} {port}; touch $f); }}; \
             n=0; while [ $n -lt {n} ]; do req; printf '\n{END}\n'; n=$((n+1)); done",
            hold * 10,
            hold + 2
        );
        let out = self.kubectl(&["exec", "client", "--", "sh", "-c", &script]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{n} requests to {addr}: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let marker = format!("\n{END}\n");
        text.split(&marker)
            .take(n as usize)
            .map(|response| {
                response
                    .split_once("\r\n\r\n")
                    .and_then(|(head, body)| {
                        Some((
                            head.split_whitespace().nth(1)?.parse().ok()?,
                            body.to_owned(),
                        ))
                    })
                    .ok_or_else(|| format!("{response:?}"))
            })
            .collect()
    }
}

/// Ends each response in the output of [`RealNode::requests`].
const END: &str = "@@meshpath-end@@";

pub fn kubectl_path() -> PathBuf {
    std::env::var_os("MESHPATH_KUBE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            repo()
                .join("target/kube")
                .join(meshpath_tests::kube::KUBE_VERSION)
        })
        .join("kubectl")
}

impl Drop for RealNode {
    fn drop(&mut self) {
        // The test's own `down` has run.
        if !self.dir.exists() {
            return;
        }
        if std::thread::panicking() {
            let st = self.script("node.sh", &["status"]);
            eprintln!("{}", String::from_utf8_lossy(&st.stdout));
            for log in ["kubelet", "containerd"] {
                let path = self.dir.join("logs").join(format!("{log}.log"));
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- {} ---", path.display());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        let t0 = Instant::now();
        let out = self.script("node.sh", &["down"]);
        eprintln!("real node: down in {:?}", t0.elapsed());
        if !out.status.success() || self.dir.exists() {
            eprintln!(
                "meshpath-tests: node.sh down: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
