# meshpath's node agent image: `docker build -t meshpath:latest .` at the repository root.
#
# Stage 1 builds with the toolchain of scripts/setup.sh: Debian bookworm's security suite has
# rustc-web/cargo-web 1.96 with a prebuilt `core` for bpfel-unknown-none (so the eBPF crate needs
# no rust-src or -Z build-std) and LLVM 22, which bpf-linker must be built against. The eBPF
# object is embedded into the agent at build time (agent/build.rs), so stage 2 needs only the
# binary. Packages and crates come from the base image's and cargo's default sources.

FROM debian:bookworm AS build
ENV DEBIAN_FRONTEND=noninteractive
# The compiler packages of scripts/setup.sh (its networking tools are for tests, not the build),
# and ca-certificates for cargo's downloads.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      rustc-web cargo-web libstd-rust-web-dev-bpf \
      llvm-22-dev libpolly-22-dev clang-22 lld-22 libzstd-dev \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# bpf-linker links the eBPF crate's bitcode with LLVM 22 (Debian's rustc emits LLVM 22
# bitcode); it finds libLLVM through llvm-22's bin directory on PATH.
ENV PATH=/root/.cargo/bin:/usr/lib/llvm-22/bin:$PATH
RUN cargo install --locked bpf-linker --version 0.13.0 --no-default-features --features llvm-22

WORKDIR /src
COPY . .
# The eBPF object first (target/bpf/meshpath.bpf.o), then the agent that embeds it.
RUN cargo xtask build-ebpf \
 && cargo build --release --locked -p meshpath \
 && install -D -m 0755 target/release/meshpath /out/meshpath

# Stage 2: the agent needs libc only (no shell-outs); the image's sh, stat and mount serve the
# DaemonSet's start-up script and its bpffs init container.
FROM debian:bookworm-slim
COPY --from=build /out/meshpath /usr/local/bin/meshpath
ENTRYPOINT ["/usr/local/bin/meshpath"]
CMD ["--help"]
