//! The churn phase of `bench-kube`: EndpointSlice patches at a fixed rate for a while, sent over
//! keep-alive connections through `kubectl proxy` (a kubectl process per patch would cost more
//! CPU than the agent under test), and the agent's CPU over the same window.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use meshpath_tests::kube::KubeCluster;

/// Parallel connections the patches are spread over: one request at a time on each.
const SENDERS: u32 = 4;

/// Patches sent by earlier phases of this process. A phase's patches are numbered on from
/// there: a phase that sent the same patches as one before it (the next agent's, on the same
/// cluster) would only write values the slices already hold, which the API server accepts
/// without a change and so without a watch event, and the agent would have nothing to do.
static PATCHES_BEFORE: AtomicU64 = AtomicU64::new(0);

/// Patch number `g`: the Service whose slice it changes and the address it writes there.
/// Successive numbers write different addresses to the same slice (and no two numbers below
/// 62 500 the same address).
fn patch_of(g: u64, services: u32) -> (u32, String) {
    let svc = (g % u64::from(services)) as u32;
    let ip = format!("10.251.{}.{}", (g / 250) % 250, g % 250 + 1);
    (svc, ip)
}

/// What was sent.
pub struct Sent {
    pub patches: u64,
    /// Patches the API server refused or that failed in flight.
    pub failed: u64,
    pub elapsed: Duration,
}

/// `kubectl proxy` on a free loopback port; stopped on drop.
pub struct Proxy {
    child: Child,
    pub port: u16,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    pub fn start(kube: &KubeCluster) -> anyhow::Result<Proxy> {
        let kubectl = meshpath_tests::kube::kube_bin_dir()?.join("kubectl");
        let mut child = Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(kube.kubeconfig())
            .args(["proxy", "--port=0", "--address=127.0.0.1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting kubectl proxy")?;
        let stdout = child.stdout.take().context("kubectl proxy stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        // "Starting to serve on 127.0.0.1:41234"
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("kubectl proxy said {line:?}"))?;
        Ok(Proxy { child, port })
    }
}

/// Patches `per_second` EndpointSlices per second for `duration`, each replacing the first
/// endpoint of one Service's slice (Services taken in turn over `services`).
pub fn run(port: u16, services: u32, per_second: u32, duration: Duration) -> anyhow::Result<Sent> {
    let started = Instant::now();
    let total = u64::from(per_second) * duration.as_secs();
    let first = PATCHES_BEFORE.fetch_add(total, Ordering::Relaxed);
    let interval = Duration::from_secs_f64(f64::from(SENDERS) / f64::from(per_second));
    let results = std::thread::scope(|s| {
        let workers: Vec<_> = (0..SENDERS)
            .map(|w| {
                s.spawn(move || -> anyhow::Result<(u64, u64)> {
                    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
                    conn.set_nodelay(true)?;
                    let (mut sent, mut failed) = (0u64, 0u64);
                    let mut i = u64::from(w);
                    while i < total {
                        // Paced from the start, so a slow response does not lower the rate
                        // (the next one goes at once).
                        let due = started + interval * (i / u64::from(SENDERS)) as u32;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let (svc, ip) = patch_of(first + i, services);
                        match patch(&mut conn, svc, &ip) {
                            Ok(true) => {}
                            Ok(false) => failed += 1,
                            Err(_) => {
                                failed += 1;
                                conn = TcpStream::connect(("127.0.0.1", port))?;
                            }
                        }
                        sent += 1;
                        i += u64::from(SENDERS);
                    }
                    Ok((sent, failed))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("sender thread"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(Sent {
        patches: results.iter().map(|r| r.0).sum(),
        failed: results.iter().map(|r| r.1).sum(),
        elapsed: started.elapsed(),
    })
}

/// One JSON patch; whether the API server accepted it.
fn patch(conn: &mut TcpStream, svc: u32, ip: &str) -> anyhow::Result<bool> {
    let body = format!(
        "[{{\"op\":\"replace\",\"path\":\"/endpoints/0/addresses/0\",\"value\":\"{ip}\"}}]"
    );
    let path = format!("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/svc-{svc}-1");
    Ok(super::http::request(conn, "PATCH", &path, "application/json-patch+json", &body)? == 200)
}

/// The process's user + system CPU time, from /proc.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().context("stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// A /proc/<pid>/status value in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("{field} value"))?
        .parse()?)
}

#[cfg(test)]
mod tests {
    use super::patch_of;

    #[test]
    fn the_next_phase_writes_other_addresses_to_the_same_slices() {
        let services = 10_000;
        let per_phase = 4_000;
        for i in 0..per_phase {
            let (svc, ip) = patch_of(i, services);
            let (svc2, ip2) = patch_of(per_phase + i, services);
            assert_eq!((svc, svc2), (i as u32, (per_phase + i) as u32));
            let (same_svc, again) = patch_of(u64::from(services) + i, services);
            assert_eq!(same_svc, svc);
            assert_ne!(again, ip, "slice {svc} would get the same address twice");
            assert_ne!(ip, ip2);
        }
    }
}
