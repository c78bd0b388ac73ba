//! `cargo xtask demo`: the seed's walk-through (examples/seed/) on a local Kubernetes node. The
//! apps run as the seed's Deployments, meshpath runs with `--source kube` and its node proxy, and
//! every scenario prints the real commands and answers and a one-line verdict with the figure
//! measured. The scenarios live in `meshpath_tests::seed_walkthrough`; the privileged tests
//! (`tests/seed_system.rs`) assert the same verdicts.

use std::time::Instant;

use anyhow::{bail, Context};
use meshpath_tests::seed_walkthrough::{self as seed, Options, Walkthrough, SCENARIOS};

use crate::bench::proc::{check_interrupted, install_interrupt_handler};
use crate::paths::debug_bin;
use crate::test::{cargo, require_root};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Scenarios to run (all when none is given), e.g. `weights jason`; see --list.
    pub scenarios: Vec<String>,
    /// Print the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Shorten the 7 s delay injection to 1 s (the YAML's fixedDelay is rewritten).
    #[arg(long)]
    pub quick: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.list {
        for s in SCENARIOS {
            println!("{:<17} {}", s.name, s.title);
        }
        return Ok(());
    }
    let chosen: Vec<_> = if args.scenarios.is_empty() {
        SCENARIOS.iter().collect()
    } else {
        let mut v = Vec::new();
        for name in &args.scenarios {
            match seed::scenario(name) {
                Some(s) => v.push(s),
                None => bail!("no scenario {name:?}; `cargo xtask demo --list` lists them"),
            }
        }
        v
    };
    require_root("the demo creates network namespaces and cgroups and loads eBPF programs")?;
    crate::build_ebpf::run()?;
    cargo(&["build", "-p", "meshpath", "-p", "meshpath-tests", "--bins"])?;
    // The harness finds the binaries through these (edition 2021: set_var is safe; single thread).
    std::env::set_var("MESHPATH_BIN", debug_bin("meshpath"));
    std::env::set_var("MP_TESTPOD_BIN", debug_bin("mp-testpod"));
    install_interrupt_handler();

    let t0 = Instant::now();
    let jaeger = seed::jaeger_bin();
    let opts = Options {
        quick: args.quick,
        jaeger,
        say: Box::new(|line| println!("{line}")),
    };
    // Every guard (agent, pods, control plane, Jaeger) is inside `w`: an error, a panic or Ctrl-C
    // (checked between scenarios) drops it, which stops and removes all of it.
    let w = Walkthrough::start(opts).context("starting the walk-through")?;
    let mut verdicts = Vec::new();
    for (i, s) in chosen.iter().enumerate() {
        check_interrupted()?;
        println!("\n[{}/{}] {}", i + 1, chosen.len(), s.name);
        verdicts.push(w.run(s));
    }
    drop(w);
    println!(
        "\nsummary ({:.0?}, everything started has been stopped and removed):",
        t0.elapsed()
    );
    for v in &verdicts {
        let word = if v.pass() { "PASS" } else { "FAIL" };
        println!("  {word} {:<17} {}", v.scenario, v.figure);
    }
    let failed = verdicts.iter().filter(|v| !v.pass()).count();
    if failed > 0 {
        bail!("{failed} of {} scenarios failed", verdicts.len());
    }
    Ok(())
}
