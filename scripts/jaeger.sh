#!/usr/bin/env bash
# Builds Jaeger (all-in-one: Zipkin receiver on :9411, query API on :16686) from the Go module proxy
# into a cache, for the tracing tests and the demo's trace. Idempotent: a binary that reports the
# wanted version is kept, so only the first run pays for the build (about 6 minutes cold on two
# cores). Prints the binary's path on stdout. Run as root on Debian (it may install packages).
set -euo pipefail
cd "$(dirname "$0")/.."

# The Go module proxy here approves v1.75.0; newer releases are served but not approved.
JAEGER_VERSION=v1.75.0
GO_TOOLCHAIN=go1.26.8
GO_MIN_MINOR=24

OUT=${MESHPATH_TOOLS_DIR:-$HOME/.cache/meshpath/tools}/jaeger-$JAEGER_VERSION
BIN=$OUT/jaeger
WORK=$OUT/.build

log() { printf 'jaeger: %s\n' "$*" >&2; }
die() { printf 'jaeger: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib/go.sh
source scripts/lib/go.sh

# `jaeger version` prints JSON with "gitVersion":"v1.75.0" when built with the version ldflags below.
have_jaeger() {
  local out
  [ -x "$BIN" ] && out=$("$BIN" version 2>/dev/null) && grep -q "\"gitVersion\":\"$JAEGER_VERSION\"" <<<"$out"
}

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
if have_jaeger; then
  log "jaeger $JAEGER_VERSION present"
  printf '%s\n' "$BIN"
  exit 0
fi

START=$SECONDS
go_resolve "$GO_MIN_MINOR" "$GO_TOOLCHAIN" "$WORK"
export GOFLAGS="-buildvcs=false -p=$GO_P" CGO_ENABLED=0 GOWORK=off

# A small tool module: `go get -tool` records jaeger's whole dependency graph at this version, so
# the build resolves exactly what Jaeger's own go.mod asks for.
mkdir -p "$WORK/tool"
cd "$WORK/tool"
if ! grep -q "github.com/jaegertracing/jaeger $JAEGER_VERSION" go.mod 2>/dev/null; then
  printf 'module meshpath.test/jaeger-tool\n\ngo 1.24.0\n' >go.mod
  rm -f go.sum
  log "resolving github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION"
  quiet "$WORK/go-get.log" low "$go_bin" get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION"
fi
# The same variables Jaeger's Makefile sets, so `jaeger version` reports the release.
pkg=github.com/jaegertracing/jaeger/internal/version
ldflags="-X $pkg.latestVersion=$JAEGER_VERSION -X $pkg.commitSHA=release -X $pkg.date=1970-01-01T00:00:00Z"
log "building jaeger $JAEGER_VERSION (nice, -p=$GO_P; cold: ~6 min)"
low "$go_bin" build -ldflags "$ldflags" -o "$BIN.tmp" github.com/jaegertracing/jaeger/cmd/jaeger
mv -f "$BIN.tmp" "$BIN"
cd - >/dev/null
if ! have_jaeger; then
  log "warning: $BIN does not report $JAEGER_VERSION (\`jaeger version\`: $("$BIN" version 2>&1 | head -c 300))"
  die "built jaeger does not report the expected version"
fi
log "built in $((SECONDS - START)) s: $BIN"
printf '%s\n' "$BIN"
