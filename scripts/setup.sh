#!/usr/bin/env bash
# Installs what meshpath needs on a fresh Debian machine, idempotently: a second run only checks.
# Sourced or run as root by scripts/demo.sh and scripts/test.sh.
set -euo pipefail

# Debian packages: Debian's rustc/cargo (1.96, LLVM 22) with a prebuilt `core` for bpfel-unknown-none,
# LLVM 22 for bpf-linker, and the networking tools the tests and the demo drive.
MESHPATH_DEB_PACKAGES=(
  rustc-web cargo-web libstd-rust-web-dev-bpf
  llvm-22-dev libpolly-22-dev clang-22 lld-22 libzstd-dev
  iproute2 bpftool curl iptables
)
BPF_LINKER_VERSION=0.13.0
BPFFS=/sys/fs/bpf

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs packages, mounts bpffs and loads eBPF programs)" >&2
  exit 1
fi

missing=()
for p in "${MESHPATH_DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# rustup's cargo for the userspace workspace; without rustup, Debian's cargo is used.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || export PATH="/usr/bin:$PATH"

# bpf-linker must link against LLVM 22, the LLVM of Debian's rustc that emits the BPF bitcode.
have_linker=""
if command -v bpf-linker >/dev/null 2>&1 && bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  have_linker=1
fi
if [ -z "$have_linker" ]; then
  log "building bpf-linker $BPF_LINKER_VERSION against LLVM 22 (about a minute)"
  PATH=/usr/lib/llvm-22/bin:$PATH cargo install --locked bpf-linker --version "$BPF_LINKER_VERSION" \
    --no-default-features --features llvm-22 >/dev/null
else
  log "bpf-linker $BPF_LINKER_VERSION present"
fi

if ! mountpoint -q "$BPFFS"; then
  log "mounting bpffs at $BPFFS"
  mount -t bpf bpf "$BPFFS"
fi
if [ ! -d /sys/fs/cgroup/unified ] || ! mountpoint -q /sys/fs/cgroup/unified; then
  echo "setup: cgroup v2 is not mounted at /sys/fs/cgroup/unified; meshpath attaches its programs there" >&2
  exit 1
fi
log "ready"
