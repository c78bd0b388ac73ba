//! `cargo xtask <command>`: builds the eBPF object with Debian's BPF-capable rustc, runs the tests
//! and the demo. Everything a newcomer types goes through here or through scripts/.

// xtask is a CLI: what it prints to stdout is its output.
#![allow(clippy::print_stdout)]

mod bench;
mod bench_kube;
mod build_ebpf;
mod demo;
mod node;
mod paths;
mod pgo;
mod soak;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "meshpath build, test and demo driver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF object (release, with BTF) into target/bpf/meshpath.bpf.o.
    BuildEbpf,
    /// Build everything and run every test: unit, in-process and privileged netns tests (root).
    /// Then, without a filter, 30 s of each fuzz target and the kernel smoke set on Debian's Linux 6.1 under qemu (if installed).
    Test {
        /// Skip the Linux 6.1 smoke run under qemu.
        #[arg(long)]
        no_vm: bool,
        /// Skip the bounded fuzz run (scripts/fuzz.sh, nightly Rust) of a full run.
        #[arg(long)]
        no_fuzz: bool,
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Run the seed's walk-through: its four apps as Deployments on a local Kubernetes node,
    /// meshpath with `--source kube`, and every scenario (or the ones named) with real output
    /// and a PASS/FAIL verdict each (root).
    Demo(demo::DemoArgs),
    /// Benchmark with fortio: meshpath's kernel path against the direct pod path and
    /// kube-proxy-style iptables, and its L7 proxy hop against nginx and HAProxy; medians,
    /// ratios, results in bench-results/<UTC time>/ (root; release build).
    Bench(bench::BenchArgs),
    /// Build the agent with profile-guided optimisation, trained on the L7 benchmark's proxy
    /// scenario, into target/pgo/use/release/meshpath (root; two release builds, ~25 min).
    Pgo(pgo::PgoArgs),
    /// Benchmark `meshpath agent --source kube` against a real kube-apiserver: full sync time,
    /// watch event → map latency and agent RSS for 1 000 and 10 000 Services (root; release).
    BenchKube(bench_kube::BenchKubeArgs),
    /// Run the privileged tests (or the lean --smoke set) on a Debian kernel (6.1, 6.12) booted
    /// under qemu, or on the host kernel ("host"); packages are cached in target/vm/.
    VmTest(vm::VmTestArgs),
    /// Load a kernel-path and an L7 service for --duration while endpoints change every second,
    /// Istio objects are edited and the agent restarts every two minutes; failed requests by kind,
    /// agent RSS and fds over time, BPF map entries, in bench-results/soak-latest.md (root).
    Soak(soak::SoakArgs),
    /// One real Kubernetes node on this machine (kubelet, containerd, runc, CNI; scripts/node.sh)
    /// and meshpath's DaemonSet on it: up, deploy, status, down, or its test (root).
    Node(node::NodeArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf => build_ebpf::run(),
        Command::Test {
            no_vm,
            no_fuzz,
            cargo_test_args,
        } => test::run(&cargo_test_args, no_vm, no_fuzz),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchKube(args) => bench_kube::run(args),
        Command::Pgo(args) => pgo::run(args),
        Command::VmTest(args) => vm::run(&args),
        Command::Soak(args) => soak::run(args),
        Command::Node(args) => node::run(args),
    }
}
