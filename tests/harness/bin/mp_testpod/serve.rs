//! `mp-testpod serve`: identity servers. Every reply carries the server's NAME so a client can
//! tell which backend (pod) actually answered, whatever address it dialled.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::args::Args;

/// Single-valued options of `serve`.
pub(crate) const KEYS: &[&str] = &["name", "http-status", "http-delay-ms", "http-log"];

pub(crate) fn run(args: Args) -> Result<ExitCode, String> {
    let name: String = args.require("name")?;
    let tcp: Vec<u16> = args.all("tcp")?;
    let udp: Vec<u16> = args.all("udp")?;
    let http: Vec<u16> = args.all("http")?;
    if tcp.is_empty() && udp.is_empty() && http.is_empty() {
        return Err("serve needs at least one --tcp, --udp or --http port".into());
    }
    let name: Arc<str> = name.into();
    let http_opts = Arc::new(HttpOpts {
        name: Arc::clone(&name),
        status: args.get("http-status")?.unwrap_or(200),
        delay: Duration::from_millis(args.get("http-delay-ms")?.unwrap_or(0)),
        log: match args.get::<String>("http-log")? {
            Some(p) => Some(Mutex::new(
                File::create(&p).map_err(|e| format!("creating {p}: {e}"))?,
            )),
            None => None,
        },
    });

    // Bind everything before printing `ready`, so a client started after `ready` can connect.
    let bind_tcp = |p: u16| {
        TcpListener::bind(("0.0.0.0", p)).map_err(|e| format!("bind tcp 0.0.0.0:{p}: {e}"))
    };
    let tcp_l = tcp
        .iter()
        .map(|&p| bind_tcp(p))
        .collect::<Result<Vec<_>, _>>()?;
    let http_l = http
        .iter()
        .map(|&p| bind_tcp(p))
        .collect::<Result<Vec<_>, _>>()?;
    let udp_s = udp
        .iter()
        .map(|&p| UdpSocket::bind(("0.0.0.0", p)).map_err(|e| format!("bind udp 0.0.0.0:{p}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;

    let mut threads = Vec::new();
    for l in tcp_l {
        let name = Arc::clone(&name);
        threads.push(thread::spawn(move || accept_loop(l, name, echo_conn)));
    }
    for l in http_l {
        let o = Arc::clone(&http_opts);
        threads.push(thread::spawn(move || accept_loop(l, o, http_conn)));
    }
    for s in udp_s {
        let name = Arc::clone(&name);
        threads.push(thread::spawn(move || udp_loop(s, &name)));
    }
    {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    // The threads run until the process is killed.
    for t in threads {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

/// Accept forever, one thread per connection (tests open few connections, and a long-lived
/// `hold` connection must not block others).
fn accept_loop<T: ?Sized + Send + Sync + 'static>(
    l: TcpListener,
    ctx: Arc<T>,
    handler: fn(TcpStream, &T) -> io::Result<()>,
) {
    for conn in l.incoming() {
        match conn {
            Ok(s) => {
                let ctx = Arc::clone(&ctx);
                thread::spawn(move || {
                    if let Err(e) = handler(s, &ctx) {
                        eprintln!("mp-testpod serve: connection: {e}");
                    }
                });
            }
            Err(e) => eprintln!("mp-testpod serve: accept: {e}"),
        }
    }
}

/// TCP: identity line first, then echo everything until EOF.
fn echo_conn(mut s: TcpStream, name: &str) -> io::Result<()> {
    s.write_all(format!("{name}\n").as_bytes())?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
}

/// UDP: answer every datagram with exactly the name bytes, to whoever sent it. A datagram
/// `session` is a stateful exchange instead: the answer is `NAME N`, N counting the session
/// datagrams this server got from that sender address, so a client sees whether every one of its
/// datagrams reached the same server state.
fn udp_loop(s: UdpSocket, name: &str) {
    let mut buf = [0u8; 64 * 1024];
    let mut sessions: std::collections::HashMap<std::net::SocketAddr, u64> = Default::default();
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                let reply = if &buf[..n] == b"session" {
                    let seen = sessions.entry(from).or_insert(0);
                    *seen += 1;
                    format!("{name} {seen}")
                } else {
                    name.to_owned()
                };
                if let Err(e) = s.send_to(reply.as_bytes(), from) {
                    eprintln!("mp-testpod serve: udp reply to {from}: {e}");
                }
            }
            Err(e) => eprintln!("mp-testpod serve: udp recv: {e}"),
        }
    }
}

/// How the HTTP server answers (`--http-status`, `--http-delay-ms`) and where it records the
/// requests it saw (`--http-log`), so tests can see traffic the client never sees (mirrors).
struct HttpOpts {
    name: Arc<str>,
    status: u16,
    delay: Duration,
    /// One JSON line per request (`{"host", "path", "headers", "peer"}`), written when the request head is read,
    /// before any delay: a slow server still shows the request at once.
    log: Option<Mutex<File>>,
}

/// Minimal HTTP/1.1 with keep-alive: any request gets `STATUS text/plain NAME` (200 unless
/// `--http-status`). Request bodies with content-length are read and discarded; chunked bodies
/// are not supported (the connection is closed after answering such a request).
fn http_conn(s: TcpStream, o: &HttpOpts) -> io::Result<()> {
    let name = &*o.name;
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue; // stray CRLF between requests is allowed (RFC 9112 §2.2)
        }
        let mut close = line.trim_end().ends_with("HTTP/1.0");
        let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut seen = serde_json::Map::new();
        let mut body_len: u64 = 0;
        let mut host = None;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((k, v)) = h.split_once(':') else {
                continue;
            };
            if k.trim().eq_ignore_ascii_case("host") {
                host = Some(v.trim().to_owned());
            }
            seen.insert(k.trim().to_ascii_lowercase(), v.trim().into());
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => body_len = v.parse().unwrap_or(0),
                "connection" if v == "close" => close = true,
                "connection" if v == "keep-alive" => close = false,
                "transfer-encoding" if v.contains("chunked") => close = true,
                _ => {}
            }
        }
        io::copy(&mut (&mut r).take(body_len), &mut io::sink())?;
        if let Some(log) = &o.log {
            let entry =
                serde_json::json!({ "host": host, "path": target, "headers": seen, "peer": peer });
            let line = format!("{entry}\n");
            let _ = log.lock().map(|mut f| f.write_all(line.as_bytes()));
        }
        if !o.delay.is_zero() {
            thread::sleep(o.delay);
        }
        let conn_hdr = if close { "connection: close\r\n" } else { "" };
        // Clients go by the code; the reason phrase is informational (RFC 9112 §4).
        let reason = if o.status == 200 { "OK" } else { "Test" };
        let resp = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{conn_hdr}\r\n{name}",
            o.status,
            name.len()
        );
        w.write_all(resp.as_bytes())?;
        w.flush()?;
        if close {
            return Ok(());
        }
    }
}
