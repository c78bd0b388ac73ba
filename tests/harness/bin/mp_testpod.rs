//! `mp-testpod`: the workload run inside test pods. One binary with a server mode and several
//! client modes so tests need nothing but std networking in their namespaces.
//!
//! ```text
//! mp-testpod serve --name NAME [--tcp PORT]... [--udp PORT]... [--http PORT]...
//!                  [--http-status CODE] [--http-delay-ms MS] [--http-log FILE]
//! mp-testpod tcp             --addr IP:PORT [--count N] [--timeout-ms T]
//! mp-testpod udp-connected   --addr IP:PORT [--count N] [--timeout-ms T]
//! mp-testpod udp-unconnected --addr IP:PORT [--count N | --duration-ms D [--interval-ms I]] [--session 1] [--timeout-ms T]
//! mp-testpod http            --addr IP:PORT [--count N] [--timeout-ms T] [--header NAME:VALUE]...
//!                            [--show-header NAME]... [--duration-ms D] [--interval-ms I]
//!                            [--per-request 1] [--path /PATH?QUERY]
//! mp-testpod hold            --addr IP:PORT [--timeout-ms T]
//! mp-testpod stream          --listen PORT
//! mp-testpod stream          --addr IP:PORT [--seconds S] [--bytes N] [--chunk-kib K]
//! mp-testpod xfer            --listen PORT | --addr IP:PORT --mode sink|pingpong|rst [...]
//! ```
//!
//! Clients print exactly one JSON object on stdout (hold: one per line) and exit 0 even when
//! individual attempts failed: failures are data (`errors`), not a crash. Usage errors exit 2.

#[path = "mp_testpod/args.rs"]
mod args;
#[path = "mp_testpod/clients.rs"]
mod clients;
#[path = "mp_testpod/hold.rs"]
mod hold;
#[path = "mp_testpod/serve.rs"]
mod serve;
#[path = "mp_testpod/stream.rs"]
mod stream;
#[path = "mp_testpod/xfer.rs"]
mod xfer;

use std::io::Write;
use std::process::ExitCode;

use args::Args;

const USAGE: &str = "usage:
  mp-testpod serve --name NAME [--tcp PORT]... [--udp PORT]... [--http PORT]... [--http-status CODE] [--http-delay-ms MS] [--http-log FILE]
  mp-testpod tcp|udp-connected|udp-unconnected|http --addr IP:PORT [--count N] [--timeout-ms T] [--header NAME:VALUE]...
  mp-testpod http ... [--show-header NAME]... [--duration-ms D] [--interval-ms I] [--per-request 1] [--path P]
  mp-testpod hold --addr IP:PORT [--timeout-ms T]
  mp-testpod stream --listen PORT
  mp-testpod stream --addr IP:PORT [--seconds S] [--bytes N] [--chunk-kib K]
  mp-testpod xfer --listen PORT
  mp-testpod xfer --addr IP:PORT --mode sink|pingpong|rst [--bytes N] [--reply-bytes M] [--size S] [--rounds R] [--small-writes 1] [--conns C]";

/// Print one JSON value as a line on stdout and flush (the harness reads line by line, and a
/// process killed later must not lose buffered output).
pub(crate) fn emit(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match cmd.as_str() {
        "serve" => Args::parse(rest, serve::KEYS, &["tcp", "udp", "http"]).and_then(serve::run),
        "tcp" | "udp-connected" | "udp-unconnected" | "http" | "hold" => {
            Args::parse(rest, clients::KEYS, &["header", "show-header"])
                .and_then(|a| clients::Common::from_args(cmd, &a))
                .map(|c| match cmd.as_str() {
                    "tcp" => clients::tcp(&c),
                    "udp-connected" => clients::udp_connected(&c),
                    "udp-unconnected" => clients::udp_unconnected(&c),
                    "http" => clients::http(&c),
                    _ => hold::run(&c),
                })
        }
        // Bulk throughput for `cargo xtask bench`: server with --listen, client with --addr.
        "stream" => Args::parse(rest, stream::KEYS, &[]).and_then(|a| stream::run(&a)),
        // Byte-exactness checks for socket redirection (see xfer.rs).
        "xfer" => Args::parse(rest, xfer::KEYS, &[]).and_then(|a| xfer::run(&a)),
        "-h" | "--help" | "help" => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown subcommand {other:?}")),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("mp-testpod: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
