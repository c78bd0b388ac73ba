//! A long-lived TCP connection held by `mp-testpod hold` inside a pod, driven from the test.
//!
//! Used to check that established connections survive changes (e.g. the agent updating or
//! removing service backends): open it, change something, then `echo` through it again.

use std::io::{BufRead, BufReader, Read, Write};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::client::testpod_bin;
use crate::node::Node;
use crate::pod::Target;

/// How long to wait for each line from the hold process.
const LINE_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `mp-testpod hold`. Borrows the [`Node`] so it cannot outlive the pod it runs in;
/// dropping it kills and reaps the process.
pub struct Hold<'n> {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    name: String,
    peer: String,
    _node: PhantomData<&'n Node>,
}

impl Node {
    /// Start `mp-testpod hold --addr ADDR` in `at` and wait for its first line, which tells
    /// which server answered and what getpeername() returned.
    pub fn hold(&self, at: impl Into<Target>, addr: SocketAddr) -> Result<Hold<'_>> {
        self.hold_in(self.target(at.into()), addr)
    }

    /// [`Node::hold`] from any pod-like place, e.g. a client namespace outside the nodes.
    pub fn hold_in(&self, pod: &crate::Pod, addr: SocketAddr) -> Result<Hold<'_>> {
        let mut cmd = pod.command(testpod_bin()?)?;
        cmd.args(["hold", "--addr", &addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning hold in {}", pod.label()))?;
        let (stdin, stdout, stderr_pipe) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());

        let (tx, lines) = mpsc::channel();
        if let Some(out) = stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = stderr_pipe {
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&s);
            });
        }
        let mut hold = Hold {
            child,
            stdin,
            lines,
            stderr,
            name: String::new(),
            peer: String::new(),
            _node: PhantomData,
        };
        let first = hold.next_json()?;
        if let Some(e) = first.get("error") {
            bail!("hold {addr} from {}: {e}", pod.label());
        }
        let field = |k: &str| first.get(k).and_then(Value::as_str).map(str::to_owned);
        hold.name =
            field("name").with_context(|| format!("hold: unexpected first line {first}"))?;
        hold.peer =
            field("peer").with_context(|| format!("hold: unexpected first line {first}"))?;
        Ok(hold)
    }
}

impl Hold<'_> {
    /// Name of the server that accepted the connection.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// getpeername() of the connection, as "ip:port".
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Pid of the hold process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `line` (without newline) through the connection and return what came back. Fails if
    /// the connection broke (the process reports it and exits) or nothing came back in time.
    pub fn echo(&mut self, line: &str) -> Result<String> {
        if line.contains('\n') {
            bail!("hold: echo line must not contain a newline");
        }
        let stdin = self.stdin.as_mut().context("hold: stdin already closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| {
                anyhow!(
                    "hold: writing to the hold process: {e}; {}",
                    self.stderr_text()
                )
            })?;
        let v = self.next_json()?;
        if let Some(s) = v.get("echo").and_then(Value::as_str) {
            return Ok(s.to_owned());
        }
        bail!("hold: {v}")
    }

    /// Close stdin (which makes the process close the connection and exit 0) and wait for it.
    pub fn close(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait().context("waiting for hold")?;
        if !status.success() {
            bail!("hold exited with {status}; {}", self.stderr_text());
        }
        Ok(())
    }

    fn next_json(&mut self) -> Result<Value> {
        let line = match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "hold: no output within {LINE_TIMEOUT:?}; {}",
                    self.stderr_text()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                // stdout closed: the process is exiting; give it a moment so the status and
                // its stderr can be reported, without risking a hang.
                let mut status = None;
                for _ in 0..100 {
                    status = self.child.try_wait().ok().flatten();
                    if status.is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                bail!(
                    "hold exited ({status:?}) without output; {}",
                    self.stderr_text()
                )
            }
        };
        serde_json::from_str(&line).with_context(|| format!("hold printed non-JSON {line:?}"))
    }

    fn stderr_text(&self) -> String {
        let s = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        format!("stderr: {:?}", s.trim())
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        // kill() is harmless if the process already exited: it stays a zombie (pid not
        // recycled) until the wait() below reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
