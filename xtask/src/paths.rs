//! Where things are, relative to the workspace root.

use std::path::PathBuf;

pub fn workspace_root() -> PathBuf {
    // xtask/ is one level below the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent dir")
        .to_path_buf()
}

/// The eBPF object the agent embeds at build time (see agent/datapath/build.rs).
pub fn bpf_object() -> PathBuf {
    workspace_root().join("target/bpf/meshpath.bpf.o")
}

pub fn debug_bin(name: &str) -> PathBuf {
    workspace_root().join("target/debug").join(name)
}
