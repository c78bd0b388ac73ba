#!/usr/bin/env bash
# Builds what a real node needs on top of the control plane of scripts/kube-bins.sh: kube-scheduler
# and kubelet (k8s.io/kubernetes, the same release), containerd v2 with its runc shim and ctr, and
# runc, all from source through the Go module proxy, into target/node-bins/ (or
# $MESHPATH_NODE_BIN_DIR). Installs the Debian packages the node and its images use: CNI plugins
# (bridge, host-local, loopback), umoci (image layouts), busybox-static (the test image's tools).
# Idempotent: a binary that reports the wanted version is kept, so a CI run builds each tool once.
# Run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep in step with scripts/kube-bins.sh: kubelet and control plane of one release.
K8S_VERSION=v1.36.3
# kubelet 1.36 needs containerd 2.x (1.35 was the last release for containerd 1.x).
CONTAINERD_VERSION=v2.4.2
RUNC_VERSION=v1.5.3
GO_TOOLCHAIN=go1.26.8
GO_MIN_MINOR=26

OUT=${MESHPATH_NODE_BIN_DIR:-$PWD/target/node-bins}
WORK=$OUT/.build
CTRD_PKG=github.com/containerd/containerd/v2

log() { printf 'node-bins: %s\n' "$*" >&2; }
die() { printf 'node-bins: error: %s\n' "$*" >&2; exit 1; }
START=$SECONDS

# See kube-bins.sh: the output is captured before grep reads it (pipefail and SIGPIPE).
reports() { local out; out=$("$@" 2>/dev/null) && grep -q "$VERSION_RE" <<<"$out"; }
have_kube() { [ -x "$OUT/$1" ] && VERSION_RE="^Kubernetes $K8S_VERSION\$" reports "$OUT/$1" --version; }
have_ctrd() { [ -x "$OUT/$1" ] && VERSION_RE=" $CONTAINERD_VERSION" reports "$OUT/$1" --version; }
# The shim prints its version with -v, not --version.
have_shim() { [ -x "$OUT/containerd-shim-runc-v2" ] && VERSION_RE=" $CONTAINERD_VERSION" reports "$OUT/containerd-shim-runc-v2" -v; }
# runc embeds its VERSION file; `runc --version` prints "runc version 1.5.3".
have_runc() { [ -x "$OUT/runc" ] && VERSION_RE="^runc version ${RUNC_VERSION#v}\$" reports "$OUT/runc" --version; }
all_present() {
  have_kube kubelet && have_kube kube-scheduler && have_ctrd containerd && have_ctrd ctr &&
    have_shim && have_runc
}

# shellcheck source=lib/go.sh
source scripts/lib/go.sh

# bridge/host-local/loopback for pod networking; umoci, busybox-static and debootstrap (the agent
# image's base) for the local images;
# libseccomp-dev and pkg-config so runc is built with seccomp support, as released.
deb_install containernetworking-plugins umoci busybox-static debootstrap libseccomp-dev pkg-config gcc libc6-dev openssl

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
if all_present; then
  log "kubelet, kube-scheduler $K8S_VERSION, containerd $CONTAINERD_VERSION, runc $RUNC_VERSION present in $OUT"
  exit 0
fi

go_resolve "$GO_MIN_MINOR" "$GO_TOOLCHAIN" "$WORK"
export GOFLAGS="-buildvcs=false -p=$GO_P" GOWORK=off

# build NAME DIR PKG TAGS LDFLAGS CGO: one binary, written under a temporary name first so an
# interrupted build never leaves a binary that looks complete.
build() {
  local name=$1 dir=$2 pkg=$3 tags=$4 ldflags=$5 cgo=$6 t=$SECONDS
  log "building $name (nice, -p=$GO_P)"
  (cd "$dir" && CGO_ENABLED=$cgo low "$go_bin" build -tags "$tags" -ldflags "$ldflags" -o "$OUT/.$name.tmp" "$pkg")
  mv -f "$OUT/.$name.tmp" "$OUT/$name"
  log "built $name in $((SECONDS - t)) s"
}

# --- kubelet, kube-scheduler: the wrapper module of kube-bins.sh (staging modules replaced) ---------
if ! have_kube kubelet || ! have_kube kube-scheduler; then
  mkdir -p "$WORK/k8s"
  if ! grep -q "k8s.io/kubernetes $K8S_VERSION" "$WORK/k8s/go.mod" 2>/dev/null; then
    k8s_mod=$(cd / && low "$go_bin" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
    [ -f "$k8s_mod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
    staging=v0.${K8S_VERSION#v1.}
    replaces=$(sed -n '/^replace (/,/^)/p' "$k8s_mod" | awk -v v="$staging" '$3 ~ /^\.\/staging\// { print "\t" $1 " => " $1 " " v }')
    [ -n "$replaces" ] || die "no staging replace directives in k8s.io/kubernetes@$K8S_VERSION's go.mod"
    printf 'module meshpath.test/node-bins\n\n%s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n%s\n)\n' \
      "$(grep -m1 '^go ' "$k8s_mod")" "$K8S_VERSION" "$replaces" >"$WORK/k8s/go.mod"
    rm -f "$WORK/k8s/go.sum"
  fi
  (cd "$WORK/k8s" && quiet go-get.log low "$go_bin" get "k8s.io/kubernetes/cmd/kubelet@$K8S_VERSION" \
    "k8s.io/kubernetes/cmd/kube-scheduler@$K8S_VERSION")
  # The version variables of Kubernetes' hack/lib/version.sh (see kube-bins.sh).
  minor=${K8S_VERSION#v1.}
  ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*}"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  # Static, as Kubernetes releases them.
  have_kube kubelet || build kubelet "$WORK/k8s" k8s.io/kubernetes/cmd/kubelet "" "$ldflags" 0
  have_kube kube-scheduler || build kube-scheduler "$WORK/k8s" k8s.io/kubernetes/cmd/kube-scheduler "" "$ldflags" 0
fi

# --- containerd, its runc shim, ctr --------------------------------------------------------------
if ! have_ctrd containerd || ! have_ctrd ctr || ! have_shim; then
  mkdir -p "$WORK/containerd"
  if ! grep -q "$CTRD_PKG $CONTAINERD_VERSION" "$WORK/containerd/go.mod" 2>/dev/null; then
    printf 'module meshpath.test/containerd-bins\n\ngo 1.26.6\n' >"$WORK/containerd/go.mod"
    rm -f "$WORK/containerd/go.sum"
  fi
  (cd "$WORK/containerd" && quiet go-get.log low "$go_bin" get "$CTRD_PKG/cmd/containerd@$CONTAINERD_VERSION" \
    "$CTRD_PKG/cmd/ctr@$CONTAINERD_VERSION" "$CTRD_PKG/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION")
  # containerd's Makefile: version ldflags; no_btrfs because btrfs needs C headers and a node on
  # overlayfs never uses it; the shim without gRPC (it speaks ttrpc), static without cgo.
  ldflags="-X $CTRD_PKG/version.Version=$CONTAINERD_VERSION -X $CTRD_PKG/version.Revision=$CONTAINERD_VERSION -X $CTRD_PKG/version.Package=$CTRD_PKG"
  have_ctrd containerd || build containerd "$WORK/containerd" "$CTRD_PKG/cmd/containerd" "urfave_cli_no_docs no_btrfs" "$ldflags" 0
  have_shim ||
    build containerd-shim-runc-v2 "$WORK/containerd" "$CTRD_PKG/cmd/containerd-shim-runc-v2" "urfave_cli_no_docs no_grpc" "$ldflags" 0
  have_ctrd ctr || build ctr "$WORK/containerd" "$CTRD_PKG/cmd/ctr" "urfave_cli_no_docs no_btrfs" "$ldflags" 0
fi

# --- runc: cgo for its nsenter C code and libseccomp ---------------------------------------------
if ! have_runc; then
  mkdir -p "$WORK/runc"
  if ! grep -q "github.com/opencontainers/runc $RUNC_VERSION" "$WORK/runc/go.mod" 2>/dev/null; then
    printf 'module meshpath.test/runc-bin\n\ngo 1.25.0\n' >"$WORK/runc/go.mod"
    rm -f "$WORK/runc/go.sum"
    (cd "$WORK/runc" && quiet go-get.log low "$go_bin" get "github.com/opencontainers/runc@$RUNC_VERSION")
  fi
  # runc's default tags minus libpathrs (a Rust library its Makefile builds separately).
  build runc "$WORK/runc" github.com/opencontainers/runc "seccomp urfave_cli_no_docs" "" 1
fi

all_present || die "built binaries in $OUT do not report the expected versions"
log "done in $((SECONDS - START)) s: $OUT/{kubelet,kube-scheduler,containerd,containerd-shim-runc-v2,ctr,runc}"
