//! The bench's Services and EndpointSlices, POSTed to the API server through `kubectl proxy` over
//! [`CONNECTIONS`] keep-alive connections at once, instead of `kubectl create -f` processes (one
//! object per request, one request at a time, under kubectl's client-side rate limit).
//!
//! What bounds the rate at 10 000 Services and beyond is the API server itself: each Service's
//! ClusterIP allocation counts every IPAddress object for its metrics (`ipallocator.Used`, which
//! lists them by label and parses each name), so a create costs time in proportion to the
//! Services already there. A `perf` of kube-apiserver 1.36 at ~9 500 Services: `Used` 13 % of
//! the samples, and string compares, map lookups, `IPAddress.GetLabels` and `netip.ParseAddr`
//! (what that loop does) another 55 %.

use std::fmt::Write as _;
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};

use super::{http, ENDPOINTS};

/// Requests in flight: enough to keep both API server cores and etcd busy while each connection
/// waits for its answer.
const CONNECTIONS: u32 = 16;

/// Creates Services `svc-0` … `svc-{n-1}` (no selector, port 80 → 8080) and one EndpointSlice of
/// [`ENDPOINTS`] ready addresses for each, every object through the API server.
pub fn run(port: u16, n: u32) -> anyhow::Result<()> {
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|w| {
                s.spawn(move || -> anyhow::Result<()> {
                    let mut conn = connect(port)?;
                    let mut body = String::new();
                    for i in (w..n).step_by(CONNECTIONS as usize) {
                        body.clear();
                        service_json(&mut body, i);
                        post(
                            &mut conn,
                            port,
                            "/api/v1/namespaces/default/services",
                            &body,
                        )
                        .with_context(|| format!("Service svc-{i}"))?;
                        body.clear();
                        slice_json(&mut body, i);
                        post(
                            &mut conn,
                            port,
                            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                            &body,
                        )
                        .with_context(|| format!("EndpointSlice svc-{i}-1"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("create thread")?;
        }
        Ok(())
    })
}

fn connect(port: u16) -> anyhow::Result<TcpStream> {
    let conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// One create, retried (on a new connection if it broke) while the API server asks to wait
/// (429) or fails for the moment (5xx); 409 counts as created (a retried request that had
/// landed).
fn post(conn: &mut TcpStream, port: u16, path: &str, body: &str) -> anyhow::Result<()> {
    let mut last = String::new();
    for attempt in 0..20u32 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(50 * u64::from(attempt.min(10))));
        }
        match http::request(conn, "POST", path, "application/json", body) {
            Ok(201 | 409) => return Ok(()),
            Ok(code @ (429 | 500..=599)) => last = format!("status {code}"),
            Ok(code) => bail!("the API server answered {code}"),
            Err(e) => {
                last = format!("{e:#}");
                *conn = connect(port)?;
            }
        }
    }
    bail!("not created after 20 attempts: {last}")
}

fn service_json(s: &mut String, i: u32) {
    let _ = write!(
        s,
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"svc-{i}"}},"spec":{{"ports":[{{"name":"http","port":80,"targetPort":8080}}]}}}}"#
    );
}

fn slice_json(s: &mut String, i: u32) {
    let _ = write!(
        s,
        r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"svc-{i}-1","labels":{{"kubernetes.io/service-name":"svc-{i}"}}}},"addressType":"IPv4","ports":[{{"name":"http","port":8080,"protocol":"TCP"}}],"endpoints":["#
    );
    for j in 0..ENDPOINTS {
        let a = i * ENDPOINTS + j + 1;
        let _ = write!(
            s,
            r#"{}{{"addresses":["10.{}.{}.{}"]}}"#,
            if j == 0 { "" } else { "," },
            128 + (a >> 16),
            (a >> 8) & 255,
            a & 255
        );
    }
    s.push_str("]}");
}
