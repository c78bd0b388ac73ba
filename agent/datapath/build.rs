//! Embeds the eBPF object built by `cargo xtask build-ebpf` (`<workspace>/target/bpf`) when it
//! exists. Without it the agent still builds (so `cargo build`/`clippy` work on a fresh clone) and
//! tells at start-up which command makes the object, or takes one from `--bpf-object`.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(meshpath_embedded_bpf)");
    println!("cargo::rerun-if-env-changed=MESHPATH_BPF_OBJECT");
    let object = match std::env::var_os("MESHPATH_BPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest_dir =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
            manifest_dir.join("../../target/bpf/meshpath.bpf.o")
        }
    };
    // Rerun when the object appears or changes (cargo watches a missing path for creation too).
    println!("cargo::rerun-if-changed={}", object.display());
    if object.is_file() {
        println!("cargo::rustc-cfg=meshpath_embedded_bpf");
        println!("cargo::rustc-env=MESHPATH_BPF_OBJECT={}", object.display());
    } else {
        println!(
            "cargo::warning=eBPF object {} not found: the agent is built without it. Run `cargo xtask build-ebpf` and rebuild, or pass --bpf-object.",
            object.display()
        );
    }
}
