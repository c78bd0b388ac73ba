//! Process helpers for the benchmark: one-shot clients with a deadline, long-lived servers that
//! signal readiness, and Ctrl-C handling that lets the run unwind and clean up.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use meshpath_tests::{Node, Pod};

/// Set by SIGINT/SIGTERM. The run checks it between measurements and then returns an error, so
/// every guard (iptables rules, agent, node) is dropped and cleans up. Dying on the signal instead
/// would leave that to the next run's stale-object sweep.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: the one thing a signal handler may safely do here.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn install_interrupt_handler() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler is async-signal-safe (a single atomic store) and lives forever.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub use meshpath_tests::Finished;

/// Spawn `cmd` (usually built by [`Pod::command`]) with piped output and wait for it, killing it
/// after `deadline` or on Ctrl-C (the harness's runner, with the bench's interrupt flag).
pub fn run_with_deadline(cmd: Command, deadline: Duration) -> Result<Finished> {
    let out = meshpath_tests::run_until(cmd, deadline, &|| INTERRUPTED.load(Ordering::SeqCst));
    check_interrupted()?;
    out.map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// Which output stream of a server announces readiness.
#[derive(Clone, Copy)]
pub enum ReadyOn {
    Stdout,
    Stderr,
}

/// Spawn a server in `pod`, register it with the node (killed and reaped on the node's Drop), and
/// wait until `ready_on` shows a line containing `marker`. Both streams end up in `log` (the
/// watched one line by line, through the watcher thread, which keeps draining it afterwards so
/// the server never blocks on a full pipe).
pub fn spawn_server(
    node: &Node,
    pod: &Pod,
    label: &str,
    mut cmd: Command,
    (ready_on, marker): (ReadyOn, &str),
    log: &Path,
) -> Result<()> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut log_copy = log_file
        .try_clone()
        .context("cloning the log file handle")?;
    cmd.stdin(Stdio::null());
    match ready_on {
        ReadyOn::Stdout => cmd.stdout(Stdio::piped()).stderr(log_file),
        ReadyOn::Stderr => cmd.stdout(log_file).stderr(Stdio::piped()),
    };
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {label} in {}", pod.label()))?;
    let watched: Box<dyn Read + Send> = match ready_on {
        ReadyOn::Stdout => Box::new(child.stdout.take().context("server stdout")?),
        ReadyOn::Stderr => Box::new(child.stderr.take().context("server stderr")?),
    };
    // Registered before waiting, so a server that never gets ready is still killed.
    node.adopt(&format!("{label} in {}", pod.label()), child);
    let (tx, rx) = mpsc::channel();
    let marker = marker.to_owned();
    std::thread::spawn(move || {
        let mut r = BufReader::new(watched);
        let mut line = String::new();
        let mut ready = false;
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            let _ = log_copy.write_all(line.as_bytes());
            if !ready && line.contains(&marker) {
                ready = true;
                let _ = tx.send(());
            }
            line.clear();
        }
    });
    if rx.recv_timeout(Duration::from_secs(10)).is_err() {
        let log_text = std::fs::read_to_string(log).unwrap_or_default();
        bail!(
            "{label} in {} did not become ready within 10 s; log:\n{}",
            pod.label(),
            tail(&log_text, 20)
        );
    }
    Ok(())
}

/// The last `n` lines of `s`, for error messages.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.trim().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run a helper binary (ip, iptables, sysctl, git, ...) and return its stdout, failing with its
/// stderr.
pub fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
