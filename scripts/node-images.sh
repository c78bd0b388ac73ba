#!/usr/bin/env bash
# Container images without a registry, for scripts/node.sh: each image's root filesystem is put
# together from files of this machine (a pause binary compiled here, Debian's busybox-static) or,
# for the agent, from Debian's packages (debootstrap) and the agent built from this tree, written as an OCI image layout with umoci, and imported
# into the node's containerd (`ctr -n k8s.io images import`). Pods use them with
# imagePullPolicy: Never or IfNotPresent.
#
#   scripts/node-images.sh import NODE_DIR          pause + busybox images
#   scripts/node-images.sh import-agent NODE_DIR    meshpath:latest (needs the agent built:
#                                                   cargo xtask build-ebpf && cargo build -p meshpath)
#   scripts/node-images.sh import-seed NODE_DIR     the seed apps' images (scripts/lib/seed-images.sh)
#
# umoci (Debian's package, the OCI project's own image tool) rather than buildah or docker: it
# needs no daemon, no registry and no base image; it writes exactly the layout ctr imports.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

NODE_BINS=${MESHPATH_NODE_BIN_DIR:-$REPO/target/node-bins}
CACHE=${MESHPATH_NODE_IMAGE_DIR:-$REPO/target/node-images}
PAUSE_IMAGE=meshpath.local/pause:1
BUSYBOX_IMAGE=meshpath.local/busybox:1
AGENT_IMAGE=docker.io/library/meshpath:latest

log() { printf 'node-images: %s\n' "$*" >&2; }
die() { printf 'node-images: error: %s\n' "$*" >&2; exit 1; }

# oci_archive NAME IMAGE ROOTFS ENTRYPOINT...: ROOTFS as a one-layer image tagged with IMAGE's tag,
# written to $CACHE/NAME.tar (an OCI layout in a tar, the format `ctr images import` reads).
oci_archive() {
  local name=$1 tag=${2##*:} rootfs=$3
  shift 3
  local layout=$CACHE/$name.layout entry=()
  rm -rf "$layout"
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  umoci insert --image "$layout:$tag" "$rootfs" /
  for e in "$@"; do entry+=(--config.entrypoint "$e"); done
  umoci config --image "$layout:$tag" --os linux --architecture amd64 "${entry[@]}" \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin
  # Drop the blobs of the intermediate (empty) image.
  umoci gc --layout "$layout"
  tar -C "$layout" -cf "$CACHE/$name.tar.tmp" .
  mv "$CACHE/$name.tar.tmp" "$CACHE/$name.tar"
  rm -rf "$layout"
}

# The sandbox's process: sleeps until told to stop. Pid 1 of a pod's PID namespace gets no default
# signal actions, so it handles SIGTERM/SIGINT itself, and reaps orphans with SIGCHLD.
PAUSE_C='#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction q = {.sa_handler = quit}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGTERM, &q, NULL);
  sigaction(SIGINT, &q, NULL);
  sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
}'

build_pause() {
  [ -s "$CACHE/pause.tar" ] && return 0
  local root=$CACHE/pause.rootfs
  rm -rf "$root" && mkdir -p "$root"
  printf '%s\n' "$PAUSE_C" >"$CACHE/pause.c"
  gcc -Os -static -o "$root/pause" "$CACHE/pause.c"
  oci_archive pause "$PAUSE_IMAGE" "$root" /pause
  rm -rf "$root"
}

# Debian's statically linked busybox with a link per applet: sh, httpd, wget, nc, ...
build_busybox() {
  [ -s "$CACHE/busybox.tar" ] && return 0
  local root=$CACHE/busybox.rootfs
  rm -rf "$root" && mkdir -p "$root/bin" "$root/tmp" "$root/www"
  cp /bin/busybox "$root/bin/busybox"
  file -b "$root/bin/busybox" 2>/dev/null | grep -q 'statically linked' ||
    ldd "$root/bin/busybox" 2>&1 | grep -q 'not a dynamic' || die "/bin/busybox is not static (install busybox-static)"
  local a
  for a in $("$root/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
  oci_archive busybox "$BUSYBOX_IMAGE" "$root" /bin/sh
  rm -rf "$root"
}

# copy_with_libs ROOT FILE DEST: FILE at ROOT/DEST, and every library it links (ldd) at its own path.
copy_with_libs() {
  local root=$1 file=$2 dest=$3 lib
  mkdir -p "$root$(dirname "$dest")"
  cp -L "$file" "$root$dest"
  for lib in $(ldd "$file" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

# The Dockerfile's final stage without Docker: its base, debian:bookworm-slim, cannot be pulled,
# so a bookworm minbase made by debootstrap from Debian's packages (the machine's own apt source)
# stands in for it, as one cached layer; the agent binary of this tree is a second layer, with the
# Dockerfile's ENTRYPOINT and CMD. The Dockerfile's build stage is the host's build
# (scripts/setup.sh installs the same Debian toolchain).
build_base() {
  [ -f "$CACHE/bookworm.layout/index.json" ] && return 0
  local mirror root=$CACHE/bookworm.rootfs
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null ||
    awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
  [ -n "$mirror" ] || die "no Debian apt source found for debootstrap"
  command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install debootstrap)"
  if [ ! -e "$root.done" ]; then
    log "debootstrap --variant=minbase bookworm (once; a few minutes)"
    rm -rf "$root"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
      die "debootstrap failed (log: $CACHE/debootstrap.log)"
    touch "$root.done"
  fi
  # What the slim image also leaves out: package caches and lists.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*
  rm -rf "$CACHE/bookworm.layout.tmp"
  umoci init --layout "$CACHE/bookworm.layout.tmp"
  umoci new --image "$CACHE/bookworm.layout.tmp:base"
  umoci insert --image "$CACHE/bookworm.layout.tmp:base" "$root" /
  umoci gc --layout "$CACHE/bookworm.layout.tmp"
  mv "$CACHE/bookworm.layout.tmp" "$CACHE/bookworm.layout"
  rm -rf "$root" "$root.done"
}

build_agent() {
  local bin=${MESHPATH_AGENT_BIN:-$REPO/target/debug/meshpath}
  [ -x "$bin" ] || die "$bin missing: cargo xtask build-ebpf && cargo build -p meshpath"
  if [ "${MESHPATH_NODE_AGENT_BASE:-debootstrap}" = host ]; then
    build_agent_from_host "$bin"
    return
  fi
  build_base
  local layout=$CACHE/agent.layout tag=${AGENT_IMAGE##*:}
  rm -rf "$layout" && cp -a "$CACHE/bookworm.layout" "$layout"
  umoci insert --image "$layout:base" --tag "$tag" "$bin" /usr/local/bin/meshpath
  umoci config --image "$layout:$tag" --os linux --architecture amd64 \
    --config.entrypoint /usr/local/bin/meshpath --config.cmd=--help
  umoci rm --image "$layout:base"
  umoci gc --layout "$layout"
  tar -C "$layout" -cf "$CACHE/agent.tar.tmp" .
  mv "$CACHE/agent.tar.tmp" "$CACHE/agent.tar"
  rm -rf "$layout"
}

# MESHPATH_NODE_AGENT_BASE=host: no debootstrap; the agent binary, Debian's sh (dash), coreutils'
# stat and util-linux's mount from this machine, each with the libraries it links. Not busybox:
# the init container tests `stat -f -c %T /sys/fs/bpf` for "bpf_fs", which busybox's stat prints
# as "UNKNOWN", so it would mount a second bpffs over the host's and hide every pin below it.
build_agent_from_host() {
  local root=$CACHE/agent.rootfs
  rm -rf "$root" && mkdir -p "$root/tmp"
  copy_with_libs "$root" "$1" /usr/local/bin/meshpath
  copy_with_libs "$root" /bin/dash /bin/sh
  copy_with_libs "$root" /usr/bin/stat /usr/bin/stat
  copy_with_libs "$root" /bin/mount /bin/mount
  oci_archive agent "$AGENT_IMAGE" "$root" /usr/local/bin/meshpath
  rm -rf "$root"
}

# import NODE_DIR NAME IMAGE: into the node's containerd under the name IMAGE.
import() {
  local ctr=("$NODE_BINS/ctr" --address "$1/containerd/containerd.sock" -n k8s.io)
  # The layout names only the tag; --base-name supplies the repository.
  "${ctr[@]}" images import --base-name "${3%:*}" "$CACHE/$2.tar" >/dev/null
  # Captured before grep reads it: with pipefail, grep -q exiting at the first match makes a
  # still-writing ctr fail with SIGPIPE.
  local names
  names=$("${ctr[@]}" images ls -q)
  grep -qx "$3" <<<"$names" || die "$3 not in containerd after importing $CACHE/$2.tar"
  log "imported $3"
}

# shellcheck source=lib/seed-images.sh
source "$REPO/scripts/lib/seed-images.sh"

command -v umoci >/dev/null || die "umoci missing: bash scripts/node-bins.sh installs it"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
case "${1:-}" in
import)
  [ -n "${2:-}" ] || die "usage: $0 import NODE_DIR"
  build_pause
  build_busybox
  import "$2" pause "$PAUSE_IMAGE"
  import "$2" busybox "$BUSYBOX_IMAGE"
  ;;
import-agent)
  [ -n "${2:-}" ] || die "usage: $0 import-agent NODE_DIR"
  build_agent
  import "$2" agent "$AGENT_IMAGE"
  ;;
import-seed)
  [ -n "${2:-}" ] || die "usage: $0 import-seed NODE_DIR"
  import_seed "$2"
  ;;
*) die "usage: $0 import|import-agent|import-seed NODE_DIR" ;;
esac
