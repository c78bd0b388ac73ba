use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    BpfLog(#[from] crate::bpf_log::BpfLogError),
    #[error("parsing the eBPF object's map definitions")]
    Parse {
        #[source]
        source: Box<aya_obj::ParseError>,
    },
    #[error("unpinning {}", path.display())]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object (maps pinned in {}) failed", pin_dir.display())]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("{}: not a directory on a bpffs (mount one: `mount -t bpf bpf /sys/fs/bpf`)", path.display())]
    NotBpffs { path: PathBuf },
    #[error("opening cgroup {}", path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the eBPF object has no program {name}: it is older than this agent (run `cargo xtask build-ebpf`)")]
    MissingProgram { name: &'static str },
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("link of program {name}")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("opening pinned link {}", path.display())]
    OpenLink {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {name} is missing from the eBPF object or the pin directory {}", pin_dir.display())]
    MissingMap {
        name: &'static str,
        pin_dir: PathBuf,
    },
    #[error("{call}")]
    Syscall {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("offsets of the kernel's TCP socket fields")]
    KernelBtf(#[from] crate::kernel_btf::BtfError),
    #[error("reading the kernel's BTF")]
    Btf {
        #[source]
        source: aya::BtfError,
    },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
