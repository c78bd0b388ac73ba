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

use std::io::{self, Read, Write};
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

/// Errors a blocking socket may report without anything being wrong: EINTR, and EAGAIN, which
/// TCP never returns on a blocking socket but the kernel's sockmap receive path (socket
/// redirection, scenario (d)) can after a wakeup without data.
fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

/// `write_all` that also retries EAGAIN (see [`retryable`]).
fn write_fully(s: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match s.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if retryable(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
            Err(e) if retryable(&e) => {}
            Err(e) => return Err(e),
        }
    }
    write_fully(&mut s, format!("{total}\n").as_bytes())
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
        if let Err(e) = write_fully(&mut s, &buf[..n]) {
            return fail("write", &e);
        }
        sent += n as u64;
    }
    if let Err(e) = s.shutdown(Shutdown::Write) {
        return fail("shutdown", &e);
    }
    // No read timeout: a timeout would be indistinguishable from a spurious EAGAIN; the caller
    // (cargo xtask bench) kills a client that hangs.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if retryable(&e) => {}
            Err(e) => return fail("reading the server's count", &e),
        }
    }
    let line = String::from_utf8_lossy(&line);
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
