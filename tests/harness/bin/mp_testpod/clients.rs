//! Client modes. Each does `count` attempts and prints one JSON report:
//! `counts` (answers by server name), `errors` (by errno name), plus mode-specific fields.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::args::Args;
use crate::emit;

/// Single-valued options of the client modes.
pub(crate) const KEYS: &[&str] = &[
    "addr",
    "count",
    "timeout-ms",
    "duration-ms",
    "interval-ms",
    "per-request",
    "session",
    "path",
    "method",
];

/// Options shared by all client modes.
pub(crate) struct Common {
    pub(crate) addr: SocketAddr,
    pub(crate) count: u64,
    pub(crate) timeout: Duration,
    /// Extra request headers for `http` (`--header "name: value"`, repeatable). A `host` header
    /// replaces the default one (the dialled address).
    pub(crate) headers: Vec<String>,
    /// `http`: response headers to count by `name: value` (`--show-header`, repeatable).
    pub(crate) show_headers: Vec<String>,
    /// `http`: keep sending until this much time passed (instead of `count` requests).
    pub(crate) duration: Option<Duration>,
    /// `http`: pause between requests.
    pub(crate) interval: Duration,
    /// `http`: report every request (`requests`), not only the totals.
    pub(crate) per_request: bool,
    /// `udp-unconnected`: a stateful exchange (see `serve`'s `session` datagrams).
    pub(crate) session: bool,
    /// `http`: the request target (`--path`, default `/`).
    pub(crate) path: String,
    /// `http`: the request method (`--method`, default GET).
    pub(crate) method: String,
}

impl Common {
    pub(crate) fn from_args(cmd: &str, a: &Args) -> Result<Common, String> {
        // TCP connects get more slack than a UDP reply; both are far below the harness's
        // per-client deadline.
        let default_ms = match cmd {
            "udp-connected" | "udp-unconnected" => 1000,
            "hold" => 5000,
            _ => 2000,
        };
        let timeout_ms: u64 = a.get("timeout-ms")?.unwrap_or(default_ms);
        if timeout_ms == 0 {
            return Err("--timeout-ms must be > 0".into());
        }
        Ok(Common {
            addr: a.require("addr")?,
            count: a.get("count")?.unwrap_or(1),
            timeout: Duration::from_millis(timeout_ms),
            headers: a.all("header")?,
            show_headers: a
                .all::<String>("show-header")?
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            duration: a.get("duration-ms")?.map(Duration::from_millis),
            interval: Duration::from_millis(a.get("interval-ms")?.unwrap_or(0)),
            per_request: a.get::<u8>("per-request")?.unwrap_or(0) != 0,
            session: a.get::<u8>("session")?.unwrap_or(0) != 0,
            path: a.get("path")?.unwrap_or_else(|| "/".to_owned()),
            method: a.get("method")?.unwrap_or_else(|| "GET".to_owned()),
        })
    }
}

/// Name of an errno as the tests expect it (`ECONNREFUSED`, ...), `errno_N` for the rest.
pub(crate) fn errno_name(e: &io::Error) -> String {
    let Some(n) = e.raw_os_error() else {
        // std's connect_timeout reports its own timeout without an errno.
        return match e.kind() {
            ErrorKind::TimedOut => "ETIMEDOUT".into(),
            ErrorKind::UnexpectedEof => "eof".into(),
            k => format!("{k:?}"),
        };
    };
    let name = match n {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EPIPE => "EPIPE",
        libc::EINVAL => "EINVAL",
        libc::EAGAIN => "EAGAIN",
        _ => return format!("errno_{n}"),
    };
    name.into()
}

/// Like [`errno_name`], but for reads with SO_RCVTIMEO, where EAGAIN means "no answer in time".
fn recv_error_name(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "timeout".into(),
        _ => errno_name(e),
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: String) {
    *map.entry(key).or_insert(0) += 1;
}

/// A UDP socket that is NOT bound: the kernel binds it on connect()/first send, as ordinary
/// clients do (std's UdpSocket::bind would bind explicitly first, which is a different path
/// through the cgroup bind/connect hooks).
fn unbound_udp() -> io::Result<UdpSocket> {
    // SAFETY: plain socket(2); the returned fd is checked and then owned exactly once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor owned by nobody else.
    Ok(UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `tcp`: sequential connects, each reading the identity line. Connect durations time the
/// connect() call alone (not the read), over all attempts including failed ones.
pub(crate) fn tcp(c: &Common) -> ExitCode {
    let (mut counts, mut errors) = (BTreeMap::new(), BTreeMap::new());
    let mut first_peer: Option<String> = None;
    let (mut first_us, mut max_us): (Option<u64>, u64) = (None, 0);
    for _ in 0..c.count {
        let t0 = Instant::now();
        let res = TcpStream::connect_timeout(&c.addr, c.timeout);
        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        first_us.get_or_insert(us);
        max_us = max_us.max(us);
        let s = match res {
            Ok(s) => s,
            Err(e) => {
                bump(&mut errors, errno_name(&e));
                continue;
            }
        };
        if first_peer.is_none() {
            first_peer = Some(match s.peer_addr() {
                Ok(p) => p.to_string(),
                Err(e) => format!("getpeername: {}", errno_name(&e)),
            });
        }
        match read_identity(&s, c.timeout) {
            Ok(name) => bump(&mut counts, name),
            Err(e) => bump(&mut errors, recv_error_name(&e)),
        }
    }
    emit(&json!({
        "counts": counts,
        "errors": errors,
        "first_peer": first_peer,
        "first_connect_us": first_us.unwrap_or(0),
        "max_connect_us": max_us,
    }));
    ExitCode::SUCCESS
}

/// Read the server's `NAME\n` line.
pub(crate) fn read_identity(s: &TcpStream, timeout: Duration) -> io::Result<String> {
    s.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if !line.ends_with('\n') {
        return Err(io::Error::new(
            ErrorKind::UnexpectedEof,
            "eof before identity line",
        ));
    }
    Ok(line.trim_end().to_owned())
}

/// `udp-connected`: per attempt a fresh socket, connect(), send, recv.
pub(crate) fn udp_connected(c: &Common) -> ExitCode {
    let (mut counts, mut errors) = (BTreeMap::new(), BTreeMap::new());
    let mut first_peer: Option<String> = None;
    for _ in 0..c.count {
        match udp_connected_once(c) {
            Ok((name, peer)) => {
                if first_peer.is_none() {
                    first_peer = peer;
                }
                bump(&mut counts, name);
            }
            Err(e) => bump(&mut errors, e),
        }
    }
    emit(&json!({ "counts": counts, "errors": errors, "first_peer": first_peer }));
    ExitCode::SUCCESS
}

/// One udp-connected attempt: (reply name, getpeername) or the error name.
fn udp_connected_once(c: &Common) -> Result<(String, Option<String>), String> {
    let s = unbound_udp().map_err(|e| errno_name(&e))?;
    s.connect(c.addr).map_err(|e| errno_name(&e))?;
    let peer = s.peer_addr().map(|p| p.to_string()).ok();
    s.set_read_timeout(Some(c.timeout))
        .map_err(|e| errno_name(&e))?;
    s.send(b"ping").map_err(|e| errno_name(&e))?;
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf).map_err(|e| recv_error_name(&e))?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), peer))
}

/// `udp-unconnected`: one socket (bound implicitly by the first sendto), sendto/recvfrom,
/// `count` times or for `--duration-ms` with `--interval-ms` pauses. `sources` records what
/// recvfrom reported as the sender of each reply; `runs` the answering servers in order, as
/// `[name, replies in a row]`. With `--session 1` each reply carries the server's count of this
/// socket's datagrams; `session_breaks` counts replies whose count was not the number this
/// client had sent to that server so far (its state was lost or split).
pub(crate) fn udp_unconnected(c: &Common) -> ExitCode {
    let (mut counts, mut errors, mut sources) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let s = match unbound_udp().and_then(|s| s.set_read_timeout(Some(c.timeout)).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            emit(&json!({ "error": format!("socket: {}", errno_name(&e)) }));
            return ExitCode::from(1);
        }
    };
    let payload: &[u8] = if c.session { b"session" } else { b"ping" };
    let mut runs: Vec<(String, u64)> = Vec::new();
    let mut session_breaks = 0u64;
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut sent = 0u64;
    while match c.duration {
        Some(d) => start.elapsed() < d,
        None => sent < c.count,
    } {
        if sent > 0 && !c.interval.is_zero() {
            std::thread::sleep(c.interval);
        }
        sent += 1;
        if let Err(e) = s.send_to(payload, c.addr) {
            bump(&mut errors, errno_name(&e));
            continue;
        }
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                let name = if c.session {
                    let (name, seen) = reply.rsplit_once(' ').unwrap_or((&reply, ""));
                    let expected = counts.get(name).copied().unwrap_or(0) + 1;
                    if seen.parse::<u64>().ok() != Some(expected) {
                        session_breaks += 1;
                    }
                    name.to_owned()
                } else {
                    reply
                };
                match runs.last_mut() {
                    Some((last, n)) if *last == name => *n += 1,
                    _ => runs.push((name.clone(), 1)),
                }
                bump(&mut counts, name);
                bump(&mut sources, from.to_string());
            }
            Err(e) => bump(&mut errors, recv_error_name(&e)),
        }
    }
    emit(&json!({
        "counts": counts,
        "errors": errors,
        "sources": sources,
        "runs": runs,
        "session_breaks": session_breaks,
    }));
    ExitCode::SUCCESS
}

/// `http`: GET / repeatedly over a keep-alive connection (reconnecting after errors or
/// `connection: close`); counts by response body, non-200 statuses as `http_<code>` in `errors`
/// and as `CODE BODY` in `answers`. `min_us`/`max_us` time each answered request (including a
/// connect it needed); `requests` (with `--per-request 1`) lists every attempt with the Unix time
/// it ended, so a test can line answers up with its own clock.
pub(crate) fn http(c: &Common) -> ExitCode {
    let (mut counts, mut errors, mut answers) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut resp_headers = BTreeMap::new();
    let (mut min_us, mut max_us): (Option<u64>, Option<u64>) = (None, None);
    let mut requests = Vec::new();
    let mut first_peer: Option<String> = None;
    let mut conn: Option<BufReader<TcpStream>> = None;
    let start = Instant::now();
    let mut sent = 0u64;
    while match c.duration {
        Some(d) => start.elapsed() < d,
        None => sent < c.count,
    } {
        if sent > 0 && !c.interval.is_zero() {
            std::thread::sleep(c.interval);
        }
        sent += 1;
        let t0 = Instant::now();
        let res = match conn.take() {
            Some(r) => Ok(r),
            None => TcpStream::connect_timeout(&c.addr, c.timeout)
                .map(|s| {
                    if first_peer.is_none() {
                        first_peer = s.peer_addr().map(|p| p.to_string()).ok();
                    }
                    let _ = s.set_read_timeout(Some(c.timeout));
                    BufReader::new(s)
                })
                .map_err(|e| errno_name(&e)),
        }
        .and_then(|mut r| {
            http_request(&mut r, c, &c.headers, &c.show_headers)
                .map(|a| (r, a))
                .map_err(|e| recv_error_name(&e))
        });
        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (status, what) = match res {
            Ok((r, a)) => {
                min_us = Some(min_us.map_or(us, |m| m.min(us)));
                max_us = Some(max_us.map_or(us, |m| m.max(us)));
                for h in a.shown {
                    bump(&mut resp_headers, h);
                }
                if a.status == 200 {
                    bump(&mut counts, a.body.clone());
                } else {
                    bump(&mut errors, format!("http_{}", a.status));
                    bump(&mut answers, format!("{} {}", a.status, a.body));
                }
                if a.keep {
                    conn = Some(r);
                }
                (a.status, a.body)
            }
            Err(e) => {
                bump(&mut errors, e.clone());
                (0, e)
            }
        };
        if c.per_request {
            let at_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
            requests.push(json!({ "at_us": at_us, "us": us, "status": status, "body": what }));
        }
    }
    let mut report = json!({
        "counts": counts,
        "errors": errors,
        "first_peer": first_peer,
        "answers": answers,
        "resp_headers": resp_headers,
        "min_us": min_us,
        "max_us": max_us,
    });
    if c.per_request {
        report["requests"] = requests.into();
    }
    emit(&report);
    ExitCode::SUCCESS
}

/// One HTTP answer.
struct Answer {
    status: u16,
    body: String,
    /// The connection can carry the next request.
    keep: bool,
    /// `name: value` of the response headers asked for (names lowercase).
    shown: Vec<String>,
}

/// One request/response.
fn http_request(
    r: &mut BufReader<TcpStream>,
    c: &Common,
    headers: &[String],
    show: &[String],
) -> io::Result<Answer> {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let has_host = headers.iter().any(|h| {
        h.split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
    });
    let host = if has_host {
        String::new()
    } else {
        format!("host: {}\r\n", c.addr)
    };
    let path = &c.path;
    let method = &c.method;
    let req = format!("{method} {path} HTTP/1.1\r\n{host}user-agent: mp-testpod\r\n{extra}\r\n");
    r.get_mut().write_all(req.as_bytes())?;
    let bad = |m: &str| io::Error::new(ErrorKind::InvalidData, m.to_owned());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            ErrorKind::UnexpectedEof,
            "eof before status line",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let (mut len, mut keep, mut shown) = (None, true, Vec::new());
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(ErrorKind::UnexpectedEof, "eof in headers"));
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if show.contains(&k) {
                shown.push(format!("{k}: {}", v.trim()));
            }
            let v = v.trim().to_ascii_lowercase();
            match k.as_str() {
                "content-length" => len = v.parse::<u64>().ok(),
                "connection" if v == "close" => keep = false,
                _ => {}
            }
        }
    }
    let len = len.ok_or_else(|| bad("response without content-length"))?;
    let mut body = Vec::new();
    r.take(len).read_to_end(&mut body)?;
    if body.len() as u64 != len {
        return Err(io::Error::new(ErrorKind::UnexpectedEof, "short body"));
    }
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        keep,
        shown,
    })
}
