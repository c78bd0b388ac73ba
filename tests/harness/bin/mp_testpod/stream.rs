//! `mp-testpod stream`: bulk TCP throughput between two pods, for `cargo xtask bench`.
//!
//! Server (`--listen PORT`): prints `ready` once bound, then for every connection counts the bytes
//! it reads until EOF and answers with that count as one decimal line. The count comes from the
//! receiver on purpose: bytes a client has written may still sit in socket buffers, so only the
//! receiver knows what actually crossed the data path.
//!
//! Client (`--addr IP:PORT`): connects, writes `--chunk-kib` sized chunks until `--seconds` have
//! passed or `--bytes` were written (whichever comes first), half-closes, and waits for the
//! server's count. The clock starts after connect() and stops when the count arrives, so the
//! time includes draining the buffers and the rate is `received / elapsed`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::args::Args;
use crate::clients::errno_name;
use crate::emit;

/// Options `stream` accepts (server and client share the subcommand).
pub(crate) const KEYS: &[&str] = &["listen", "addr", "seconds", "bytes", "chunk-kib"];

pub(crate) fn run(a: &Args) -> Result<ExitCode, String> {
    match (a.get::<u16>("listen")?, a.get::<SocketAddr>("addr")?) {
        (Some(port), None) => serve(port),
        (None, Some(addr)) => {
            let seconds: f64 = a.get("seconds")?.unwrap_or(5.0);
            let bytes: u64 = a.get("bytes")?.unwrap_or(u64::MAX);
            let chunk_kib: usize = a.get("chunk-kib")?.unwrap_or(128);
            if seconds.is_nan() || seconds <= 0.0 || bytes == 0 || chunk_kib == 0 {
                return Err("--seconds, --bytes and --chunk-kib must be > 0".into());
            }
            Ok(client(
                addr,
                Duration::from_secs_f64(seconds),
                bytes,
                chunk_kib * 1024,
            ))
        }
        _ => Err("stream needs exactly one of --listen PORT (server) or --addr IP:PORT".into()),
    }
}

fn serve(port: u16) -> Result<ExitCode, String> {
    let l = TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| format!("bind tcp 0.0.0.0:{port}: {e}"))?;
    {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    for conn in l.incoming() {
        match conn {
            // One thread per connection: a stuck client must not block the next measurement.
            Ok(s) => {
                thread::spawn(move || {
                    if let Err(e) = count_and_ack(s) {
                        eprintln!("mp-testpod stream: connection: {e}");
                    }
                });
            }
            Err(e) => eprintln!("mp-testpod stream: accept: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn count_and_ack(mut s: TcpStream) -> io::Result<()> {
    // Large reads keep the receiver's syscall count (and so its CPU share on a 2-core machine)
    // low, so the measurement is dominated by the data path rather than by this loop.
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    s.write_all(format!("{total}\n").as_bytes())?;
    s.flush()
}

fn client(addr: SocketAddr, limit: Duration, max_bytes: u64, chunk: usize) -> ExitCode {
    let fail = |stage: &str, e: &io::Error| {
        emit(&json!({ "error": format!("{stage}: {}", errno_name(e)), "detail": e.to_string() }));
        ExitCode::from(1)
    };
    let t_connect = Instant::now();
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return fail("connect", &e),
    };
    let connect_us = u64::try_from(t_connect.elapsed().as_micros()).unwrap_or(u64::MAX);
    let peer = s.peer_addr().map(|p| p.to_string()).unwrap_or_default();
    // Non-zero, non-constant bytes: nothing on the path may special-case a zero page.
    let buf: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    let mut sent: u64 = 0;
    while sent < max_bytes && start.elapsed() < limit {
        let n = usize::try_from((max_bytes - sent).min(chunk as u64)).unwrap_or(chunk);
        if let Err(e) = s.write_all(&buf[..n]) {
            return fail("write", &e);
        }
        sent += n as u64;
    }
    if let Err(e) = s.shutdown(Shutdown::Write) {
        return fail("shutdown", &e);
    }
    // Draining a few hundred MB of socket buffers takes well under this.
    if let Err(e) = s.set_read_timeout(Some(Duration::from_secs(30))) {
        return fail("set_read_timeout", &e);
    }
    let mut line = String::new();
    if let Err(e) = BufReader::new(&s).read_line(&mut line) {
        return fail("reading the server's count", &e);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let Ok(received) = line.trim().parse::<u64>() else {
        emit(&json!({ "error": format!("server answered {line:?} instead of a byte count") }));
        return ExitCode::from(1);
    };
    emit(&json!({
        "peer": peer,
        "connect_us": connect_us,
        "sent": sent,
        "bytes": received,
        "seconds": elapsed,
        "bytes_per_sec": received as f64 / elapsed,
    }));
    ExitCode::SUCCESS
}
