//! `mp-testpod hold`: keep one TCP connection open and echo stdin lines through it, so a test
//! can check that an established connection keeps working across changes it makes meanwhile.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;

use serde_json::json;

use crate::clients::{errno_name, read_identity, Common};
use crate::emit;

fn fail(what: &str, e: &io::Error) -> ExitCode {
    // SO_RCVTIMEO expiry surfaces as EAGAIN; name it like the other clients do.
    let detail = match e.kind() {
        io::ErrorKind::WouldBlock => "timeout".to_owned(),
        _ => errno_name(e),
    };
    emit(&json!({ "error": format!("{what}: {detail}") }));
    ExitCode::from(1)
}

pub(crate) fn run(c: &Common) -> ExitCode {
    let s = match TcpStream::connect_timeout(&c.addr, c.timeout) {
        Ok(s) => s,
        Err(e) => return fail("connect", &e),
    };
    let name = match read_identity(&s, c.timeout) {
        Ok(n) => n,
        Err(e) => return fail("identity", &e),
    };
    let peer = match s.peer_addr() {
        Ok(p) => p.to_string(),
        Err(e) => return fail("getpeername", &e),
    };
    emit(&json!({ "name": name, "peer": peer }));

    // read_identity used its own BufReader on a shared reference; the server sends nothing
    // after the identity line until we write, so no buffered bytes were lost.
    let mut reader = BufReader::new(&s);
    let mut writer = &s;
    for line in io::stdin().lock().lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => return fail("stdin", &e),
        };
        if let Err(e) = writer.write_all(format!("{line}\n").as_bytes()) {
            return fail("write", &e);
        }
        let mut back = String::new();
        match reader.read_line(&mut back) {
            Ok(0) => {
                emit(&json!({ "error": "read: connection closed by peer" }));
                return ExitCode::from(1);
            }
            Ok(_) => emit(&json!({ "echo": back.trim_end_matches('\n') })),
            Err(e) => return fail("read", &e),
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    ExitCode::SUCCESS
}
