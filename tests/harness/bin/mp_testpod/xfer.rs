//! `mp-testpod xfer`: byte-exactness checks for socket redirection. Both sides generate the same
//! pseudo-random stream from a seed and compare every byte they receive with it, so a lost,
//! duplicated or reordered byte is found at its exact offset (stronger than comparing hashes; a
//! hash of the received bytes is reported too).
//!
//! Server: `xfer --listen PORT` prints `ready`, then serves each connection on its own thread.
//! Client: `xfer --addr IP:PORT --mode sink|pingpong|rst [--bytes N] [--reply-bytes M]
//!          [--size S] [--rounds R] [--small-writes 1] [--conns C] [--seed X]` prints one JSON line.
//!
//! - `sink`: the client sends N bytes, half-closes; the server reads to EOF, answers with what it
//!   saw (count, first mismatch, hash), then keeps sending M bytes and closes: half-close with the
//!   other side still sending, both directions checked.
//! - `pingpong`: R round trips of S bytes, each echoed and checked.
//! - `rst`: the client sends N bytes; the server reads them and resets the connection
//!   (SO_LINGER 0); the client reports what its next read returned.
//! - `--conns C`: C connections opened first and all held open at once, then each runs the mode
//!   on its own thread.
//! - `--io poll` (default): non-blocking sockets and poll(2), the way Go, Java NIO, Node and tokio
//!   do I/O. `--io blocking`: plain blocking calls; an EAGAIN from a blocking recv() (which TCP
//!   never returns, but the kernel's sockmap receive path does after a wakeup without data) is
//!   counted in `eagain_on_blocking` and retried, so the byte check still covers the stream.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::{json, Value};

use crate::args::Args;
use crate::clients::errno_name;
use crate::emit;

pub(crate) const KEYS: &[&str] = &[
    "listen",
    "addr",
    "mode",
    "bytes",
    "reply-bytes",
    "size",
    "rounds",
    "small-writes",
    "conns",
    "seed",
    "io",
    "dual-stack",
];

const MAGIC: u32 = 0x4d50_5846; // "MPXF"
const HEADER_LEN: usize = 40;
const MODE_SINK: u32 = 1;
const MODE_PINGPONG: u32 = 2;
const MODE_RST: u32 = 3;
const NO_MISMATCH: u64 = u64::MAX;
/// Small stacks: a test holds 1000 connections, one thread each, on both sides.
const THREAD_STACK: usize = 256 * 1024;

/// The deterministic byte stream both sides agree on (xorshift64*, 8 bytes per step).
struct Stream {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Stream {
    fn new(seed: u64) -> Stream {
        Stream {
            state: seed | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// Checks received bytes against the expected stream; remembers the first mismatch and hashes.
struct Checker {
    expected: Stream,
    scratch: Vec<u8>,
    count: u64,
    first_mismatch: u64,
    hash: u64,
}

impl Checker {
    fn new(seed: u64) -> Checker {
        Checker {
            expected: Stream::new(seed),
            scratch: vec![0; 64 * 1024],
            count: 0,
            first_mismatch: NO_MISMATCH,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }

    fn feed(&mut self, got: &[u8]) {
        for chunk in got.chunks(self.scratch.len()) {
            let want = &mut self.scratch[..chunk.len()];
            self.expected.fill(want);
            if self.first_mismatch == NO_MISMATCH && chunk != want {
                let at = chunk
                    .iter()
                    .zip(want.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                self.first_mismatch = self.count + at as u64;
            }
            for b in chunk {
                self.hash = (self.hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
            self.count += chunk.len() as u64;
        }
    }
}

/// A TCP connection driven either with poll(2) or with blocking calls (see the module docs).
struct Conn {
    s: TcpStream,
    poll: bool,
    eagain_on_blocking: u64,
}

impl Conn {
    fn new(s: TcpStream, poll: bool) -> io::Result<Conn> {
        s.set_nonblocking(poll)?;
        Ok(Conn {
            s,
            poll,
            eagain_on_blocking: 0,
        })
    }

    fn wait(&self, events: i16) -> io::Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.s.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd; 30 s so a stuck peer fails the test instead of hanging it.
        let n = unsafe { libc::poll(&mut pfd, 1, 30_000) };
        match n {
            0 => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "poll timed out after 30 s",
            )),
            n if n < 0 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.s.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.poll {
                        self.wait(libc::POLLIN)?;
                    } else {
                        self.eagain_on_blocking += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read(buf)? {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof")),
                n => buf = &mut buf[n..],
            }
        }
        Ok(())
    }

    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.s.write(buf) {
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.poll => {
                    self.wait(libc::POLLOUT)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.s.shutdown(Shutdown::Write)
    }
}

struct Header {
    mode: u32,
    size: u32,
    seed: u64,
    bytes: u64,
    reply_bytes: u64,
    rounds: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&self.mode.to_le_bytes());
        h[8..16].copy_from_slice(&self.seed.to_le_bytes());
        h[16..24].copy_from_slice(&self.bytes.to_le_bytes());
        h[24..32].copy_from_slice(&self.reply_bytes.to_le_bytes());
        h[32..36].copy_from_slice(&self.size.to_le_bytes());
        h[36..40].copy_from_slice(&(self.rounds as u32).to_le_bytes());
        h
    }

    fn decode(h: &[u8; HEADER_LEN]) -> io::Result<Header> {
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad xfer header",
            ));
        }
        Ok(Header {
            mode: u32_at(4),
            seed: u64_at(8),
            bytes: u64_at(16),
            reply_bytes: u64_at(24),
            size: u32_at(32),
            rounds: u64::from(u32_at(36)),
        })
    }
}

pub(crate) fn run(a: &Args) -> Result<ExitCode, String> {
    raise_fd_limit();
    if let Some(port) = a.get::<u16>("listen")? {
        // `--dual-stack 1`: listen on [::] like Go and Java servers do; IPv4 clients then arrive
        // on AF_INET6 sockets with v4-mapped addresses.
        let host = if a.get::<u8>("dual-stack")?.unwrap_or(0) == 1 {
            "::"
        } else {
            "0.0.0.0"
        };
        return serve(host, port);
    }
    let addr: SocketAddr = a.require("addr")?;
    let mode = match a.get::<String>("mode")?.as_deref().unwrap_or("sink") {
        "sink" => MODE_SINK,
        "pingpong" => MODE_PINGPONG,
        "rst" => MODE_RST,
        other => return Err(format!("unknown --mode {other:?}")),
    };
    let opts = ClientOpts {
        mode,
        bytes: a.get("bytes")?.unwrap_or(1 << 20),
        reply_bytes: a.get("reply-bytes")?.unwrap_or(0),
        size: a.get("size")?.unwrap_or(64),
        rounds: a.get("rounds")?.unwrap_or(1000),
        small_writes: a.get::<u8>("small-writes")?.unwrap_or(0) == 1,
        seed: a.get("seed")?.unwrap_or(0x5eed),
        poll: match a.get::<String>("io")?.as_deref().unwrap_or("poll") {
            "poll" => true,
            "blocking" => false,
            other => return Err(format!("unknown --io {other:?} (poll or blocking)")),
        },
    };
    let conns: usize = a.get("conns")?.unwrap_or(1);
    let started = Instant::now();
    // Open every connection first, so all of them are established at the same time.
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        match TcpStream::connect(addr) {
            Ok(s) => streams.push(s),
            Err(e) => {
                emit(
                    &json!({"error": format!("connect {addr}: {}", errno_name(&e)), "connected": streams.len()}),
                );
                return Ok(ExitCode::from(1));
            }
        }
    }
    let handles: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let o = ClientOpts {
                seed: opts.seed.wrapping_add(i as u64 * 2),
                ..opts
            };
            std::thread::Builder::new()
                .stack_size(THREAD_STACK)
                .spawn(move || client(s, &o))
                .expect("spawn")
        })
        .collect();
    let results: Vec<Value> = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| json!({"ok": false, "error": "panic"}))
        })
        .collect();
    let ok = results.iter().filter(|r| r["ok"] == true).count();
    let failures: Vec<&Value> = results.iter().filter(|r| r["ok"] != true).take(5).collect();
    let eagain: u64 = results
        .iter()
        .filter_map(|r| r["eagain_on_blocking"].as_u64())
        .sum();
    emit(
        &json!({"conns": conns, "ok": ok, "failures": failures, "first": results.first(), "eagain_on_blocking": eagain, "elapsed_ms": started.elapsed().as_millis() as u64}),
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy)]
struct ClientOpts {
    mode: u32,
    bytes: u64,
    reply_bytes: u64,
    size: u32,
    rounds: u64,
    small_writes: bool,
    seed: u64,
    poll: bool,
}

fn client(s: TcpStream, o: &ClientOpts) -> Value {
    let result = (|| -> io::Result<Value> {
        let mut c = Conn::new(s, o.poll)?;
        let h = Header {
            mode: o.mode,
            size: o.size,
            seed: o.seed,
            bytes: o.bytes,
            reply_bytes: o.reply_bytes,
            rounds: o.rounds,
        };
        c.write_all(&h.encode())?;
        let mut v = match o.mode {
            MODE_SINK => sink_client(&mut c, o),
            MODE_PINGPONG => pingpong_client(&mut c, o),
            _ => rst_client(&mut c, o),
        }?;
        v["eagain_on_blocking"] = json!(c.eagain_on_blocking);
        Ok(v)
    })();
    result.unwrap_or_else(|e| match e.raw_os_error() {
        Some(_) => json!({"ok": false, "error": errno_name(&e)}),
        None => json!({"ok": false, "error": e.to_string()}),
    })
}

/// Sends `bytes` of the stream, in 64 KiB writes or in many writes of 1..=64 bytes.
fn send_stream(s: &mut Conn, seed: u64, bytes: u64, small: bool) -> io::Result<()> {
    let mut src = Stream::new(seed);
    let mut sizes = Stream::new(seed ^ 0xffff);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = if small {
            let mut b = [0u8];
            sizes.fill(&mut b);
            (u64::from(b[0]) % 64 + 1).min(left) as usize
        } else {
            (buf.len() as u64).min(left) as usize
        };
        src.fill(&mut buf[..n]);
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Names the step an I/O error happened in, so a failure report says where.
fn at(step: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{step}: {}", errno_name(&e)))
}

fn sink_client(s: &mut Conn, o: &ClientOpts) -> io::Result<Value> {
    send_stream(s, o.seed, o.bytes, o.small_writes).map_err(at("send"))?;
    s.shutdown_write().map_err(at("shutdown"))?;
    let mut verdict = [0u8; 24];
    s.read_exact(&mut verdict).map_err(at("read verdict"))?;
    let word = |i: usize| u64::from_le_bytes(verdict[i..i + 8].try_into().expect("8 bytes"));
    let (server_count, server_mismatch, server_hash) = (word(0), word(8), word(16));
    let mut reply = Checker::new(o.seed.wrapping_add(1));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).map_err(at("read reply"))?;
        if n == 0 {
            break;
        }
        reply.feed(&buf[..n]);
    }
    let mut sent = Checker::new(o.seed);
    let ok = server_count == o.bytes
        && server_mismatch == NO_MISMATCH
        && reply.count == o.reply_bytes
        && reply.first_mismatch == NO_MISMATCH;
    if o.bytes <= 64 << 20 {
        // The sender's own hash of what it sent, for the report (cheap for small transfers).
        let mut regen = vec![0u8; o.bytes as usize];
        Stream::new(o.seed).fill(&mut regen);
        sent.feed(&regen);
    }
    Ok(json!({
        "ok": ok && (o.bytes > 64 << 20 || sent.hash == server_hash),
        "sent": o.bytes, "server_count": server_count,
        "server_first_mismatch": (server_mismatch != NO_MISMATCH).then_some(server_mismatch),
        "server_hash": format!("{server_hash:016x}"),
        "sent_hash": (o.bytes <= 64 << 20).then(|| format!("{:016x}", sent.hash)),
        "reply_expected": o.reply_bytes, "reply_received": reply.count,
        "reply_first_mismatch": (reply.first_mismatch != NO_MISMATCH).then_some(reply.first_mismatch),
    }))
}

fn pingpong_client(s: &mut Conn, o: &ClientOpts) -> io::Result<Value> {
    let mut src = Stream::new(o.seed);
    let (mut out, mut back) = (vec![0u8; o.size as usize], vec![0u8; o.size as usize]);
    let mut mismatches = 0u64;
    let started = Instant::now();
    for _ in 0..o.rounds {
        src.fill(&mut out);
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
        mismatches += u64::from(out != back);
    }
    let mean_rtt_us = started.elapsed().as_secs_f64() * 1e6 / o.rounds.max(1) as f64;
    s.shutdown_write()?;
    let eof = s.read(&mut back)? == 0;
    Ok(
        json!({"ok": mismatches == 0 && eof, "rounds": o.rounds, "mismatches": mismatches, "mean_rtt_us": mean_rtt_us}),
    )
}

fn rst_client(s: &mut Conn, o: &ClientOpts) -> io::Result<Value> {
    send_stream(s, o.seed, o.bytes, false)?;
    let started = Instant::now();
    s.s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut buf = [0u8; 16];
    let outcome = match s.read(&mut buf) {
        Ok(0) => "eof".to_string(),
        Ok(n) => format!("unexpected {n} bytes"),
        Err(e) => errno_name(&e),
    };
    let reset = outcome == "ECONNRESET";
    Ok(json!({"ok": reset, "outcome": outcome, "detect_ms": started.elapsed().as_millis() as u64}))
}

fn serve(host: &str, port: u16) -> Result<ExitCode, String> {
    let l = TcpListener::bind((host, port)).map_err(|e| format!("bind tcp {host}:{port}: {e}"))?;
    {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    for conn in l.incoming() {
        let Ok(s) = conn else { continue };
        let _ = std::thread::Builder::new()
            .stack_size(THREAD_STACK)
            .spawn(move || {
                if let Err(e) = serve_one(s) {
                    eprintln!("mp-testpod xfer: {}", errno_name(&e));
                }
            });
    }
    Ok(ExitCode::SUCCESS)
}

fn serve_one(s: TcpStream) -> io::Result<()> {
    // The server side is always poll-driven, like the servers users run (Go, Java NIO, Node).
    let mut s = Conn::new(s, true)?;
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h)?;
    let h = Header::decode(&h)?;
    let mut buf = vec![0u8; 64 * 1024];
    match h.mode {
        MODE_SINK => {
            let mut seen = Checker::new(h.seed);
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                seen.feed(&buf[..n]);
            }
            let mut verdict = [0u8; 24];
            verdict[0..8].copy_from_slice(&seen.count.to_le_bytes());
            verdict[8..16].copy_from_slice(&seen.first_mismatch.to_le_bytes());
            verdict[16..24].copy_from_slice(&seen.hash.to_le_bytes());
            s.write_all(&verdict)?;
            send_stream(&mut s, h.seed.wrapping_add(1), h.reply_bytes, false)?;
            s.shutdown_write()
        }
        MODE_PINGPONG => {
            let mut block = vec![0u8; h.size as usize];
            for _ in 0..h.rounds {
                s.read_exact(&mut block)?;
                s.write_all(&block)?;
            }
            let _ = s.read(&mut block)?; // the client's EOF
            s.shutdown_write()
        }
        MODE_RST => {
            let mut left = h.bytes;
            while left > 0 {
                let n = s.read(&mut buf[..(left.min(64 * 1024)) as usize])?;
                if n == 0 {
                    break;
                }
                left -= n as u64;
            }
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt on our own socket with a correctly sized linger struct.
            unsafe {
                libc::setsockopt(
                    s.s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    std::ptr::from_ref(&linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            drop(s); // close with linger 0: RST
            Ok(())
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("mode {other}"),
        )),
    }
}

/// 1000 connections need more than the default 1024 descriptors on some systems.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
