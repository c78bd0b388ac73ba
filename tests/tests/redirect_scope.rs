//! Socket redirection's default scope: only opted-in pods (`meshpath.io/socket-redirect`) and
//! the node proxy. Real blocking clients (Python's `socket`, libpq's psql and pgbench) through a
//! ClusterIP under the default see no error and their sockets never enter the SOCKHASH; an
//! opted-in workload's sockets do, and its messages are redirected.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshpath_tests::agent::counter;
use meshpath_tests::manifests::{docs, endpoint_slice, service, Ep};
use meshpath_tests::{skip_line, skip_unless, wait_until, Cluster, AGENT};
use serde_json::Value;

const PY_PORT: u16 = 9100;
const PY_VIP: &str = "10.96.0.91";
const PG_PORT: u16 = 5432;
const PG_VIP: &str = "10.96.0.92";
const CONNS: u64 = 200;
const REPLY: u64 = 256 * 1024;
const CLIENT: &str = include_str!("redirect_scope/blocking_client.py");
const SERVER: &str = include_str!("redirect_scope/blocking_server.py");
const PYTHON: &str = "/usr/bin/python3";

fn pod_manifest(name: &str, ip: std::net::Ipv4Addr, annotation: Option<&str>) -> String {
    let annotations = annotation
        .map(|v| format!("  annotations:\n    meshpath.io/socket-redirect: \"{v}\"\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n{annotations}\
         spec:\n  containers: [{{name: c, image: x}}]\nstatus:\n  podIP: {ip}\n"
    )
}

/// Pod 1 serves the blocking Python server behind PY_VIP.
fn python_cluster(agent_args: &[&str]) -> Cluster {
    let c = Cluster::start(3, &[], agent_args);
    let dir = c.node.work_dir().to_path_buf();
    std::fs::write(dir.join("client.py"), CLIENT).expect("client script");
    std::fs::write(dir.join("server.py"), SERVER).expect("server script");
    let ready = dir.join("server.ready");
    let pod = c.node.pod(1);
    let mut cmd = pod.command(PYTHON).expect("pod command");
    cmd.arg(dir.join("server.py"))
        .arg(pod.ip().to_string())
        .arg(PY_PORT.to_string())
        .arg(REPLY.to_string())
        .arg(&ready);
    pod.spawn(cmd).expect("python server");
    assert!(
        wait_until(Duration::from_secs(10), || ready.exists()),
        "python server did not listen"
    );
    c.write(
        "blocking.yaml",
        &docs(&[
            service("blocking", PY_VIP, PY_PORT, &PY_PORT.to_string(), "TCP", ""),
            endpoint_slice("blocking", PY_PORT, "TCP", &[Ep::ready(pod.ip())]),
        ]),
    );
    c.wait_status("blocking programmed", Duration::from_secs(5), |s| {
        meshpath_tests::agent::service(s, "default/blocking:").is_some()
    });
    c
}

/// Runs the blocking Python client in pod `at`: CONNS connections to the ClusterIP.
fn python_clients(c: &Cluster, at: usize) -> Value {
    let dir = c.node.work_dir();
    let out = c
        .node
        .pod(at)
        .command(PYTHON)
        .expect("pod command")
        .arg(dir.join("client.py"))
        .arg(PY_VIP)
        .arg(PY_PORT.to_string())
        .arg(CONNS.to_string())
        .arg(REPLY.to_string())
        .output()
        .expect("python client");
    assert!(out.status.success(), "client failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("client report")
}

#[test]
fn blocking_python_clients_see_no_error_under_the_default() {
    skip_unless!(AGENT);
    // No --socket-redirect: the default scope.
    let c = python_cluster(&[]);
    let r = python_clients(&c, 0);
    let s = c.status();
    eprintln!("default scope, python blocking clients: {r}");
    assert_eq!(r["ok"], CONNS, "{r}\n{}", c.agent.log());
    assert_eq!(s["socket_redirect"]["scope"], "opt-in", "{s:#}");
    // Both ends of every connection were seen and left out of the SOCKHASH.
    assert!(counter(&s, "sock_not_opted_in") >= 2 * CONNS, "{s:#}");
    assert_eq!(counter(&s, "sock_inserted"), 0, "{s:#}");
    assert_eq!(counter(&s, "msg_redirected"), 0, "{s:#}");
}

#[test]
fn an_opted_in_workload_is_redirected_and_a_pod_can_opt_out() {
    skip_unless!(AGENT);
    // The namespace opts in; pod 2 opts itself out.
    let c = python_cluster(&[]);
    let ip = |i: usize| c.node.pod(i).ip();
    c.write(
        "opt-in.yaml",
        &docs(&[
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  annotations:\n    \
             meshpath.io/socket-redirect: \"true\"\n"
                .to_string(),
            pod_manifest("client", ip(0), None),
            pod_manifest("server", ip(1), None),
            pod_manifest("opted-out", ip(2), Some("false")),
        ]),
    );
    c.wait_status("two pods opted in", Duration::from_secs(5), |s| {
        s["socket_redirect"]["opted_in_pods"] == 2
    });
    let before = c.status();
    let r = python_clients(&c, 0);
    let s = c.status();
    eprintln!("opted-in pods, python blocking clients (redirected): {r}");
    assert_eq!(r["conns"], CONNS, "{r}");
    let inserted = counter(&s, "sock_inserted") - counter(&before, "sock_inserted");
    assert!(inserted >= 2 * CONNS, "{inserted} inserted: {s:#}");
    // Every reply that arrived whole went socket to socket. (Some of these blocking clients
    // may fail with BlockingIOError: the very reason only opted-in workloads are redirected.)
    let whole = r["ok"].as_u64().expect("ok count");
    assert!(whole > 0, "{r}");
    assert!(
        counter(&s, "msg_redirected_bytes") >= whole * REPLY,
        "replies must be redirected: {s:#}"
    );
    // The opted-out pod's sockets stay on TCP; the server's end (opted in) finds no peer.
    let before = c.status();
    let r = python_clients(&c, 2);
    let s = c.status();
    assert_eq!(r["ok"], CONNS, "{r}");
    let not_in = counter(&s, "sock_not_opted_in") - counter(&before, "sock_not_opted_in");
    assert!(not_in >= CONNS, "{not_in} left out: {s:#}");
}

/// Whether this VM's `--socket-redirect all` still reproduces the failure the default avoids
/// (the kernel's `tcp_bpf_recvmsg`): measured, printed, not asserted (it is a race).
#[test]
fn redirecting_everything_is_still_available() {
    skip_unless!(AGENT);
    let c = python_cluster(&["--socket-redirect", "all"]);
    let r = python_clients(&c, 0);
    let s = c.status();
    eprintln!("--socket-redirect all, python blocking clients: {r}");
    assert_eq!(s["socket_redirect"]["scope"], "all", "{s:#}");
    assert!(counter(&s, "sock_inserted") >= 2 * CONNS, "{s:#}");
    assert_eq!(counter(&s, "sock_not_opted_in"), 0, "{s:#}");
}

/// PostgreSQL's server binaries: `MESHPATH_POSTGRES_BIN`, else what `scripts/postgres.sh`
/// finds (installing Debian's package if missing).
fn postgres_bin() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MESHPATH_POSTGRES_BIN") {
        return Some(PathBuf::from(d));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("scripts/postgres.sh"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn run_as_postgres(bin: &Path, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin)
        .args(args)
        .output()
        .expect("runuser");
    assert!(out.status.success(), "{bin:?} {args:?}: {out:?}");
}

#[test]
fn psql_and_pgbench_see_no_error_under_the_default() {
    skip_unless!(AGENT);
    let Some(bin) = postgres_bin() else {
        use std::io::Write;
        let line = skip_line(
            "psql_and_pgbench_see_no_error_under_the_default",
            "PostgreSQL not available (bash scripts/postgres.sh)",
        );
        // Past libtest's capture, as the harness's own skips are.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
        return;
    };
    let c = Cluster::start(2, &[], &[]);
    let server = c.node.pod(1);
    // The data directory belongs to the postgres user, which must reach it.
    let work = c.node.work_dir();
    let data = work.join("pgdata");
    std::fs::create_dir(&data).expect("pgdata");
    let chown = |p: &Path| {
        let st = Command::new("chown")
            .arg("postgres:")
            .arg(p)
            .status()
            .expect("chown");
        assert!(st.success());
    };
    chown(&data);
    let mut p = work.to_path_buf();
    while p.parent().is_some() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o001))
                .expect("chmod o+x");
        }
        p.pop();
    }
    let data_s = data.display().to_string();
    run_as_postgres(
        &bin.join("initdb"),
        &[
            "-D",
            &data_s,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
    );
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhost all all 0.0.0.0/0 trust\n",
    )
    .expect("pg_hba");
    let mut cmd = server.command("runuser").expect("pod command");
    cmd.args(["-u", "postgres", "--"])
        .arg(bin.join("postgres"))
        .args(["-D", &data_s, "-p", &PG_PORT.to_string()])
        .arg("-c")
        .arg(format!("listen_addresses={}", server.ip()))
        .arg("-c")
        .arg(format!("unix_socket_directories={data_s}"))
        .args(["-c", "max_connections=100", "-c", "fsync=off"]);
    server.spawn(cmd).expect("postgres");
    c.write(
        "pg.yaml",
        &docs(&[
            service("pg", PG_VIP, PG_PORT, &PG_PORT.to_string(), "TCP", ""),
            endpoint_slice("pg", PG_PORT, "TCP", &[Ep::ready(server.ip())]),
        ]),
    );
    c.wait_status("pg programmed", Duration::from_secs(5), |s| {
        meshpath_tests::agent::service(s, "default/pg:").is_some()
    });
    let client = c.node.pod(0);
    let port = PG_PORT.to_string();
    let pg = |program: &str, args: &[&str]| {
        client
            .command(program)
            .expect("pod command")
            .args(["-h", PG_VIP, "-p", &port, "-U", "postgres"])
            .args(args)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .expect(program)
    };
    assert!(
        wait_until(Duration::from_secs(20), || pg("psql", &["-c", "select 1"])
            .status
            .success()),
        "postgres did not answer through the ClusterIP"
    );
    // psql: one connection per query, 100 times.
    let mut psql_failed = 0;
    for i in 0..100 {
        let out = pg("psql", &["-tA", "-c", &format!("select {i} + 1")]);
        if !out.status.success()
            || String::from_utf8_lossy(&out.stdout).trim() != (i + 1).to_string()
        {
            psql_failed += 1;
            eprintln!("psql {i}: {out:?}");
        }
    }
    let init = pg("pgbench", &["-i", "-s", "2", "postgres"]);
    assert!(init.status.success(), "pgbench -i: {init:?}");
    // 8 clients, new connection per transaction (-C) and kept ones, 2 000 transactions each way.
    let mut summaries = Vec::new();
    for extra in [&["-C"][..], &[][..]] {
        let mut args = vec!["-c", "8", "-j", "2", "-t", "250"];
        args.extend_from_slice(extra);
        args.push("postgres");
        let out = pg("pgbench", &args);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "pgbench {args:?}: {out:?}");
        let processed = text
            .lines()
            .find(|l| l.starts_with("number of transactions actually processed"))
            .unwrap_or("")
            .to_owned();
        let failed = text
            .lines()
            .find(|l| l.starts_with("number of failed transactions"))
            .unwrap_or("number of failed transactions: 0")
            .to_owned();
        eprintln!("pgbench {args:?}: {processed}; {failed}");
        assert!(processed.contains("2000/2000"), "{text}");
        assert!(failed.contains(": 0"), "{text}");
        summaries.push(processed);
    }
    let s = c.status();
    eprintln!("default scope, psql: 100 queries, {psql_failed} failed; pgbench: {summaries:?}");
    assert_eq!(psql_failed, 0);
    assert_eq!(counter(&s, "sock_inserted"), 0, "{s:#}");
    assert!(counter(&s, "sock_not_opted_in") >= 200, "{s:#}");
}
