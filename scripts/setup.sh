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
  # `cargo xtask vm-test` (and the Linux 6.1 smoke run of `cargo xtask test`): qemu boots Debian's
  # kernel packages; static busybox is the guest's initramfs.
  qemu-system-x86 busybox-static
  # dig, for the DNS proxy tests.
  bind9-dnsutils
)
BPF_LINKER_VERSION=0.13.0
BPFFS=/sys/fs/bpf
FORTIO_VERSION=1.66.5
FORTIO_BIN=/usr/local/bin/fortio

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

# nginx and HAProxy for the L7 rows of `cargo xtask bench`: the bench runs their binaries itself,
# inside its per-run network namespaces; their system services must neither start nor be enabled.
BENCH_DEB_PACKAGES=(nginx haproxy)
missing=()
for p in "${BENCH_DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages for the L7 benchmark (services not started): ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d exiting 101 makes invoke-rc.d skip starting the packages' services.
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$own_policy" ]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  # The packages enable their units for the next boot; undo that where systemd runs.
  if [ -d /run/systemd/system ]; then
    systemctl disable --quiet "${missing[@]}" 2>/dev/null || true
  fi
else
  log "nginx and haproxy present (for the L7 benchmark)"
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

# fortio drives `cargo xtask bench`. Pinned: v1.69+ needs grol.io/grol, which the Go module proxy
# refuses here (403), and v1.72's checksum is missing from the sum database; v1.66.5 builds.
if [ "$("$FORTIO_BIN" version 2>/dev/null)" = "$FORTIO_VERSION" ]; then
  log "fortio $FORTIO_VERSION present"
else
  go_bin=$(command -v go || true)
  [ -z "$go_bin" ] && [ -x /usr/local/go/bin/go ] && go_bin=/usr/local/go/bin/go
  if [ -z "$go_bin" ]; then
    log "installing Debian's golang-go to build fortio"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends golang-go >/dev/null
    go_bin=/usr/bin/go
  fi
  # fortio's go.mod says go 1.21; older Go cannot fetch a newer toolchain by itself.
  go_minor=$("$go_bin" env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
  if [ "${go_minor:-0}" -lt 21 ]; then
    echo "setup: $("$go_bin" version) is too old to build fortio $FORTIO_VERSION (needs Go >= 1.21);" \
      "install a newer Go (e.g. into /usr/local/go) and run setup again" >&2
    exit 1
  fi
  log "installing fortio $FORTIO_VERSION into $(dirname "$FORTIO_BIN") (go install)"
  GOBIN=$(dirname "$FORTIO_BIN") "$go_bin" install "fortio.org/fortio@v$FORTIO_VERSION"
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
