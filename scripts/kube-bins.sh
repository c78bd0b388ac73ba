#!/usr/bin/env bash
# Builds the Kubernetes control plane the kube tests start on loopback (tests/harness/kube/):
# kube-apiserver, kube-controller-manager and kubectl from k8s.io/kubernetes, and etcd, all from
# source fetched through the Go module proxy, into target/kube/<k8s version>/ (or
# $MESHPATH_KUBE_BIN_DIR, which the harness reads too). Idempotent: binaries that already report
# the wanted version are kept, so only the first run pays for the build (about 12 minutes cold on
# two cores; a check of a fraction of a second afterwards). Run as root on Debian (it may install packages).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=v1.36.3
# The staging modules (k8s.io/api, k8s.io/apiserver, ...) are published as v0.<minor>.<patch>.
K8S_STAGING_VERSION=v0.${K8S_VERSION#v1.}
# The etcd release k8s.io/kubernetes $K8S_VERSION pins in build/dependencies.yaml.
ETCD_VERSION=v3.6.8
# k8s.io/kubernetes $K8S_VERSION says "go 1.26.0"; this is the toolchain fetched when the local Go
# is older.
GO_TOOLCHAIN=go1.26.8
GO_MIN_MINOR=26

OUT=${MESHPATH_KUBE_BIN_DIR:-$PWD/target/kube/$K8S_VERSION}
WORK=$OUT/.build

log() { printf 'kube-bins: %s\n' "$*" >&2; }
die() { printf 'kube-bins: error: %s\n' "$*" >&2; exit 1; }
START=$SECONDS
elapsed() { local s=$((SECONDS - ${1:-$START})); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

# Does the binary at $1 exist and report the wanted version? The output is captured before grep
# reads it: with pipefail, `cmd | grep -q` fails whenever grep exits at the first match while cmd
# is still writing its next lines (SIGPIPE), which made a fresh build "not report" its version.
reports() { local out; out=$("$@" 2>/dev/null) && grep -qx "$VERSION_LINE" <<<"$out"; }
have_kube() { [ -x "$OUT/$1" ] && VERSION_LINE="Kubernetes $K8S_VERSION" reports "$OUT/$1" --version; }
have_kubectl() {
  [ -x "$OUT/kubectl" ] && VERSION_LINE="Client Version: $K8S_VERSION" reports "$OUT/kubectl" version --client
}
have_etcd() { [ -x "$OUT/etcd" ] && VERSION_LINE="etcd Version: ${ETCD_VERSION#v}" reports "$OUT/etcd" --version; }
all_present() { have_kube kube-apiserver && have_kube kube-controller-manager && have_kubectl && have_etcd; }

# shellcheck source=lib/go.sh
source scripts/lib/go.sh

# The harness writes its PKI (CA, serving certificate, service-account key) with the openssl CLI.
deb_install openssl

mkdir -p "$OUT"
# Two test runs starting at once (shared machine) must not build into the same directory together.
exec 9>"$OUT/.lock"
flock 9

if all_present; then
  log "kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION and etcd $ETCD_VERSION present in $OUT"
  exit 0
fi

# --- Go toolchain -------------------------------------------------------------------------------
go_resolve "$GO_MIN_MINOR" "$GO_TOOLCHAIN" "$WORK"

# GOMODCACHE and GOCACHE stay at Go's defaults (~/go/pkg/mod, ~/.cache/go-build): they are shared
# with other Go builds on the machine and survive `cargo clean`, so wiping target/ costs only the
# link of these binaries (about a minute), not the 12-minute compile. About 1.3 GB of modules and
# 3.3 GB of build cache. nice/ionice, and -p=1 outside CI (lib/go.sh): the cores are shared.
# CGO_ENABLED=0 as in Kubernetes' and etcd's release builds: static binaries, no C compiler needed.
export GOFLAGS="-buildvcs=false -p=$GO_P" CGO_ENABLED=0 GOWORK=off

# --- Kubernetes ---------------------------------------------------------------------------------
# One wrapper module for the three commands: k8s.io/kubernetes replaces its staging modules with
# ./staging/..., which only hold inside its own repository, so the wrapper replaces each of them with
# its published version instead. The three binaries share most packages, so the build cache makes
# the second and third cheap.
if ! have_kube kube-apiserver || ! have_kube kube-controller-manager || ! have_kubectl; then
  mkdir -p "$WORK/k8s"
  cd "$WORK/k8s"
  if [ ! -s go.sum ] || ! grep -q "k8s.io/kubernetes $K8S_VERSION" go.mod 2>/dev/null; then
    log "resolving k8s.io/kubernetes $K8S_VERSION"
    k8s_mod=$(low "$go_bin" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
    [ -f "$k8s_mod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
    go_line=$(grep -m1 '^go ' "$k8s_mod")
    replaces=$(sed -n '/^replace (/,/^)/p' "$k8s_mod" | awk -v v="$K8S_STAGING_VERSION" '$3 ~ /^\.\/staging\// { print "\t" $1 " => " $1 " " v }')
    [ -n "$replaces" ] || die "no staging replace directives found in k8s.io/kubernetes@$K8S_VERSION's go.mod"
    printf 'module meshpath.test/kube-bins\n\n%s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n%s\n)\n' \
      "$go_line" "$K8S_VERSION" "$replaces" >go.mod
    rm -f go.sum
    log "$(printf '%s\n' "$replaces" | wc -l) staging modules replaced with $K8S_STAGING_VERSION"
    log "downloading the modules of kube-apiserver, kube-controller-manager and kubectl (~1 GB)"
    quiet "$WORK/k8s/go-get.log" low "$go_bin" get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" \
      "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION"
  fi
  # Without these the binaries report "v0.0.0-master+$Format:%H$", which kubectl and client
  # libraries cannot parse; the same variables hack/lib/version.sh sets in Kubernetes' own build.
  minor_v=${K8S_VERSION#v1.}
  ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor_v%%.*}"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  for cmd in kube-apiserver kube-controller-manager kubectl; do
    if [ "$cmd" = kubectl ]; then have_kubectl && continue; else have_kube "$cmd" && continue; fi
    t=$SECONDS
    log "building $cmd $K8S_VERSION (nice, -p=$GO_P; cold: ~7 min for the first, ~2 min for each other)"
    low "$go_bin" build -ldflags "$ldflags" -o "$OUT/.$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
    mv -f "$OUT/.$cmd.tmp" "$OUT/$cmd"
    log "built $cmd in $(elapsed "$t")"
  done
  cd - >/dev/null
fi

# --- etcd ---------------------------------------------------------------------------------------
# `go install go.etcd.io/etcd/server/v3@...` refuses (its go.mod has replace directives), so a
# wrapper module requires it; the server module's root package is etcd's main.
if ! have_etcd; then
  mkdir -p "$WORK/etcd"
  cd "$WORK/etcd"
  if [ ! -s go.sum ] || ! grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION" go.mod 2>/dev/null; then
    log "resolving go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    printf 'module meshpath.test/etcd-bin\n\ngo 1.24.0\n' >go.mod
    rm -f go.sum
    quiet "$WORK/etcd/go-get.log" low "$go_bin" get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  fi
  t=$SECONDS
  log "building etcd $ETCD_VERSION (~1 minute cold)"
  low "$go_bin" build -o "$OUT/.etcd.tmp" go.etcd.io/etcd/server/v3
  mv -f "$OUT/.etcd.tmp" "$OUT/etcd"
  log "built etcd in $(elapsed "$t")"
  cd - >/dev/null
fi

all_present || die "built binaries in $OUT do not report the expected versions"
log "done in $(elapsed): $OUT/{kube-apiserver,kube-controller-manager,kubectl,etcd}"
