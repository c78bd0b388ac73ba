# Sourced by the scripts that build Go tools from the Go module proxy (kube-bins.sh, jaeger.sh).
# go_resolve MIN_MINOR TOOLCHAIN WORKDIR: sets $go_bin to a Go of at least go1.MIN_MINOR, using the
# machine's Go when it is new enough, else TOOLCHAIN (e.g. go1.26.8) from the Go module proxy;
# installs Debian's golang-go first when the machine has no Go at all. Needs log, die, deb_install.
go_minor() { "$1" env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p'; }

go_resolve() {
  local min_minor=$1 toolchain=$2 work=$3 minor
  go_bin=$(command -v go || true)
  [ -z "$go_bin" ] && [ -x /usr/local/go/bin/go ] && go_bin=/usr/local/go/bin/go
  if [ -z "$go_bin" ]; then
    # Any Go that can download modules is enough: the wanted toolchain is fetched below.
    deb_install golang-go
    go_bin=/usr/bin/go
  fi
  minor=$(go_minor "$go_bin")
  if [ "${minor:-0}" -ge "$min_minor" ]; then
    export GOTOOLCHAIN=local
  elif [ "${minor:-0}" -ge 21 ]; then
    # Go >= 1.21 downloads golang.org/toolchain@...-$toolchain from GOPROXY by itself.
    log "$("$go_bin" version) is older than go1.$min_minor; using $toolchain from the Go module proxy"
    export GOTOOLCHAIN=$toolchain
  else
    # Older Go (Debian bookworm has 1.19) cannot switch toolchains, but can download the toolchain
    # module; the module cache keeps files read-only and without execute bits, so copy it out.
    local tc_dir=$work/$toolchain tc_mod tc_src
    if [ ! -x "$tc_dir/bin/go" ]; then
      tc_mod=golang.org/toolchain@v0.0.1-$toolchain.linux-$("$go_bin" env GOARCH)
      log "$("$go_bin" version) is too old to switch toolchains; fetching $tc_mod from the Go module proxy"
      tc_src=$(cd / && GO111MODULE=on "$go_bin" mod download -json "$tc_mod" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
      [ -n "$tc_src" ] || die "could not download $tc_mod"
      mkdir -p "$work"
      rm -rf "$tc_dir.tmp" && cp -r "$tc_src" "$tc_dir.tmp" && chmod -R u+w "$tc_dir.tmp"
      chmod +x "$tc_dir.tmp"/bin/* "$tc_dir.tmp"/pkg/tool/*/*
      mv "$tc_dir.tmp" "$tc_dir"
    fi
    go_bin=$tc_dir/bin/go
    export GOTOOLCHAIN=local
  fi
  log "using $("$go_bin" version)"
}

# Go's package-level build parallelism: 1 where the machine's cores are shared with other work,
# every core in CI (nothing else runs there, and a cold build of the tools is most of a cold run).
# MESHPATH_GO_PARALLEL overrides.
GO_P=${MESHPATH_GO_PARALLEL:-$(if [ -n "${CI:-}" ]; then nproc; else echo 1; fi)}

# Runs a build at the lowest CPU and I/O priority: the machine's two cores are shared.
low() {
  if command -v ionice >/dev/null 2>&1; then nice -n 19 ionice -c3 "$@"; else nice -n 19 "$@"; fi
}

# quiet LOG CMD...: keeps a chatty command's output in LOG, shows it only on failure.
quiet() {
  local log=$1
  shift
  "$@" >"$log" 2>&1 || { cat "$log" >&2; die "failed: $* (log: $log)"; }
}

# deb_install PKG...: installs the Debian packages that are missing (as root).
deb_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "Debian packages missing (${missing[*]}); run as root"
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
