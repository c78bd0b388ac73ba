//! `meshpath`: the node agent and its CLI.

mod admin;
mod bpf_log;
mod cgroup_layout;
mod config;
mod conn_reset;
mod coverage;
mod cpus;
mod dns;
mod graph;
mod heap;
mod kernel_metrics;
mod netns;
mod proxy_listeners;
mod reconcile;
mod run;
mod tc_path;
mod tc_veth;
mod tcp_metrics;
mod tcp_sample;
mod top;
mod ui;
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
            let mut cfg = config::AgentConfig::from(&*args);
            let workers = cpus::detect(cfg.worker_threads, &cfg.cgroup_mount);
            cfg.worker_threads = Some(workers);
            tracing::info!(workers, "runtime worker threads");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
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
            match args.output {
                config::ValidateOutput::Text => print!("{}", report.to_text()),
                config::ValidateOutput::Json => print!("{}", report.to_json()),
            }
            let errors = report.count(validate::Severity::Error);
            tracing::info!(
                files = report.files,
                objects = report.objects,
                errors,
                warnings = report.count(validate::Severity::Warning),
                infos = report.count(validate::Severity::Info),
                "validated"
            );
            if errors > 0 {
                std::process::exit(1);
            }
        }
        Command::Stats(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let stats = rt
                .block_on(admin::fetch(args.admin.admin_addr, "/stats"))
                .context("meshpath stats")?;
            #[allow(clippy::print_stdout)] // CLI output
            {
                print!("{}", admin::filter_lines(&stats, args.filter.as_deref()));
            }
        }
        Command::Recompile(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt
                .block_on(admin::request(args.admin_addr, "POST", "/debug/recompile"))
                .context("meshpath recompile")?;
            #[allow(clippy::print_stdout)] // CLI output
            {
                print!("{report}");
            }
            if !report.starts_with("full recompile: same") {
                std::process::exit(1);
            }
        }
        Command::Top(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let interval = (!args.once).then(|| std::time::Duration::from_secs_f64(args.interval));
            let window = std::time::Duration::from_secs_f64(args.window);
            rt.block_on(top::run(args.admin.admin_addr, window, interval))
                .context("meshpath top")?;
        }
        Command::Cleanup(args) => {
            datapath::cleanup(&args.pin_dir).context("meshpath cleanup")?;
            tracing::info!(pin_dir = %args.pin_dir.display(), "programs detached, maps unpinned");
        }
    }
    Ok(())
}
