//! `mp-testpod serve`: identity servers. Every reply carries the server's NAME so a client can
//! tell which backend (pod) actually answered, whatever address it dialled.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use crate::args::Args;

pub(crate) fn run(args: Args) -> Result<ExitCode, String> {
    let name: String = args.require("name")?;
    let tcp: Vec<u16> = args.all("tcp")?;
    let udp: Vec<u16> = args.all("udp")?;
    let http: Vec<u16> = args.all("http")?;
    if tcp.is_empty() && udp.is_empty() && http.is_empty() {
        return Err("serve needs at least one --tcp, --udp or --http port".into());
    }
    let name: Arc<str> = name.into();

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
        let name = Arc::clone(&name);
        threads.push(thread::spawn(move || accept_loop(l, name, http_conn)));
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
fn accept_loop(l: TcpListener, name: Arc<str>, handler: fn(TcpStream, &str) -> io::Result<()>) {
    for conn in l.incoming() {
        match conn {
            Ok(s) => {
                let name = Arc::clone(&name);
                thread::spawn(move || {
                    if let Err(e) = handler(s, &name) {
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

/// UDP: answer every datagram with exactly the name bytes, to whoever sent it.
fn udp_loop(s: UdpSocket, name: &str) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.recv_from(&mut buf) {
            Ok((_, from)) => {
                if let Err(e) = s.send_to(name.as_bytes(), from) {
                    eprintln!("mp-testpod serve: udp reply to {from}: {e}");
                }
            }
            Err(e) => eprintln!("mp-testpod serve: udp recv: {e}"),
        }
    }
}

/// Minimal HTTP/1.1 with keep-alive: any request gets `200 text/plain NAME`. Request bodies with
/// content-length are read and discarded; chunked bodies are not supported (the connection is
/// closed after answering such a request).
fn http_conn(s: TcpStream, name: &str) -> io::Result<()> {
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
        let mut body_len: u64 = 0;
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
        let conn_hdr = if close { "connection: close\r\n" } else { "" };
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{conn_hdr}\r\n{name}",
            name.len()
        );
        w.write_all(resp.as_bytes())?;
        w.flush()?;
        if close {
            return Ok(());
        }
    }
}
