//! `meshpath`: the node agent and its CLI.

mod admin;
mod bpf_log;
mod cgroup_layout;
mod config;
mod coverage;
mod dns;
mod kernel_metrics;
mod netns;
mod proxy_listeners;
mod reconcile;
mod run;
mod tcp_metrics;
mod validate;

use meshpath_datapath::{self as datapath, status};

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use config::{Command, ENV_LOG};

fn main() -> anyhow::Result<()> {
    let cli = config::parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    match cli.command {
        Command::Agent(args) => {
            let cfg = config::AgentConfig::from(&*args);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(run::run(cfg)).context("meshpath agent")?;
        }
        Command::Status(args) => {
            let status = status::read(&args.pin.pin_dir).context("meshpath status")?;
            let text = if args.json {
                serde_json::to_string_pretty(&status)? + "\n"
            } else {
                status::render(&status)
            };
            #[allow(clippy::print_stdout)] // CLI output
            {
                print!("{text}");
            }
        }
        Command::Redirect(args) => {
            let on = args.state == config::OnOff::On;
            let mut maps = datapath::DatapathMaps::open_pinned(&args.pin.pin_dir)
                .context("meshpath redirect")?;
            datapath::redirect::set_enabled(&mut maps.config, on).context("meshpath redirect")?;
            tracing::info!(pin_dir = %args.pin.pin_dir.display(), on, "socket redirection switched for new connections");
        }
        Command::Validate(args) => {
            let report = validate::validate(&args.paths);
            #[allow(clippy::print_stdout)] // CLI output
            {
                for problem in &report.problems {
                    println!("{problem}");
                }
                for warning in &report.warnings {
                    println!("warning: {warning}");
                }
            }
            if !report.problems.is_empty() {
                std::process::exit(1);
            }
            tracing::info!(
                files = report.files,
                objects = report.objects,
                "no problems found"
            );
        }
        Command::Stats(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let stats = rt
                .block_on(admin::fetch_stats(args.admin.admin_addr))
                .context("meshpath stats")?;
            #[allow(clippy::print_stdout)] // CLI output
            {
                print!("{}", admin::filter_lines(&stats, args.filter.as_deref()));
            }
        }
        Command::Cleanup(args) => {
            datapath::cleanup(&args.pin_dir).context("meshpath cleanup")?;
            tracing::info!(pin_dir = %args.pin_dir.display(), "programs detached, maps unpinned");
        }
    }
    Ok(())
}
