#!/usr/bin/env bash
# Fuzzes meshpath's parsers of untrusted input with cargo-fuzz (libFuzzer on nightly Rust):
#   manifests      a manifest file through the manifests source (YAML, Kubernetes, Istio kinds)
#   istio          every document as a VirtualService and a DestinationRule: validation, conversion
#   proxy_request  raw HTTP/1 request heads through the proxy's request path (matching, rewrites,
#                  header operations, hashing, redirects, retry decisions) over a fixed table;
#                  a head the proxy's own HTTP/1.1 server takes must parse as hyper parses it
#   proxy_routes   a routing table compiled from fuzzed YAML, and a request through it
#   upstream_response  raw bytes as an upstream's HTTP/1 response, read by the proxy's client
# Each corpus (fuzz/corpus/<target>, kept between runs) is seeded from the repository's YAML.
# Installs what is missing, idempotently: the nightly toolchain (rustup) and cargo-fuzz, built
# once into a cache and kept while it reports the pinned version.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 40 s, every target)
#
# Exits non-zero when a target crashes, panics, leaks or hangs; the input is then in
# fuzz/artifacts/<target>/ (replay: cargo +nightly fuzz run -s none <target> <file>, in fuzz/).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET=${1:-40}
shift || true
TARGETS=("$@")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=(manifests istio proxy_request proxy_routes upstream_response)
TOOLS=${MESHPATH_TOOLS_DIR:-$HOME/.cache/meshpath/tools}
OUT=$TOOLS/cargo-fuzz-$CARGO_FUZZ_VERSION

log() { printf 'fuzz: %s\n' "$*" >&2; }

export PATH="$HOME/.cargo/bin:$PATH"
command -v rustup >/dev/null || { log "rustup is needed for a nightly toolchain"; exit 1; }
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "installing the nightly toolchain (rustup, minimal profile)"
  rustup toolchain install nightly --profile minimal >/dev/null
fi

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
if [ "$("$OUT/bin/cargo-fuzz" --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  log "building cargo-fuzz $CARGO_FUZZ_VERSION into $OUT (about two minutes, once)"
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$OUT" --force
fi
flock -u 9
export PATH="$OUT/bin:$PATH"

# Seeds: every YAML file of the repository's examples, Istio conformance cases and test data; the
# proxy_request heads in fuzz/seeds/; for proxy_routes, the seed's cluster with each of its Istio
# objects, then a NUL and a request head.
seed() {
  local target=$1 dir=fuzz/corpus/$1
  mkdir -p "$dir"
  case $target in
    manifests | istio)
      find examples tests/istio-conformance agent/source/src deploy fuzz/routes.yaml \
        -name '*.yaml' -type f -print0 |
        while IFS= read -r -d '' f; do cp -n "$f" "$dir/$(printf '%s' "$f" | tr '/' '_')"; done
      ;;
    proxy_request) cp -n fuzz/seeds/proxy_request/* "$dir/" ;;
    upstream_response) cp -n fuzz/seeds/upstream_response/* "$dir/" ;;
    proxy_routes)
      local testdata=agent/source/src/istio/testdata head
      for f in "$testdata"/*.yaml; do
        for head in fuzz/seeds/proxy_request/*; do
          { cat "$testdata/cluster.yaml"; printf '\n---\n'; cat "$f"; printf '\0'; cat "$head"; } \
            >"$dir/$(basename "$f" .yaml)-$(basename "$head")"
        done
      done
      for head in fuzz/seeds/proxy_request/*; do
        { cat fuzz/routes.yaml; printf '\0'; cat "$head"; } >"$dir/routes-$(basename "$head")"
      done
      ;;
  esac
}

cd fuzz
START=$SECONDS
log "building ${TARGETS[*]} (nightly, release with debug assertions)"
mkdir -p target
if ! cargo +nightly fuzz build -s none >target/build.log 2>&1; then
  tail -40 target/build.log >&2
  exit 1
fi
log "built in $((SECONDS - START)) s"
cd ..
failed=()
for t in "${TARGETS[@]}"; do
  seed "$t"
  log_file=fuzz/target/$t.log
  mkdir -p fuzz/target
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: 2 GiB is a leak or a blow-up.
  if (cd fuzz && cargo +nightly fuzz run -s none "$t" -- -max_total_time="$SECONDS_PER_TARGET" \
    -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1) >"$log_file" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log_file")
    cov=$(grep -o 'cov: [0-9]*' "$log_file" | tail -1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    log "$t: ${runs:-?} inputs in ${SECONDS_PER_TARGET} s, ${cov:-cov: ?} edges, corpus $corpus, no crash"
  else
    log "$t: FAILED; the end of its log ($log_file):"
    tail -40 "$log_file" >&2
    failed+=("$t")
  fi
done
log "done in $((SECONDS - START)) s"
if [ "${#failed[@]}" -gt 0 ]; then
  log "crashing targets: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
