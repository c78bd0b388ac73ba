#!/usr/bin/env bash
# Builds the four applications of the seed's demo (examples/seed/apps/) into a cache:
#   $SEED_APPS_CACHE (default target/seed-apps)/<app>/<content hash>/bin/<app>
# The hash covers the app's source files and the toolchain that builds it, so a second run with
# nothing changed builds nothing (a check of about a second). Each bin/<app> is the one thing to
# execute: the Go binary itself, or a launcher that execs java -jar / the venv's python (same pid).
# Go's build cache, Maven's ~/.m2 and pip's cache are the usual ones and are reused.
#
# Missing toolchains are installed from Debian (idempotent; root): Go (golang-go) when neither
# `go` nor /usr/local/go is there, a JDK >= 17 (Spring Boot 4) and Maven, python3 with venv.
#
# Last lines on stdout, one per app, for scripts and tests to read:
#   seed-app <app> <path of bin/<app>>
# The same paths go to $SEED_APPS_CACHE/paths.env as SEED_APP_<APP>=<path>.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SRC=$REPO/examples/seed/apps
CACHE=${SEED_APPS_CACHE:-$REPO/target/seed-apps}
APPS=(golang-app-gateway golang-app-data springboot-app python-app-anticaptcha)

log() { printf 'seed-apps: %s\n' "$*" >&2; }
die() { printf 'seed-apps: error: %s\n' "$*" >&2; exit 1; }
trap 'die "failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

deb_install() {
  local missing=() p
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  [ "$(id -u)" -eq 0 ] || die "Debian packages missing (${missing[*]}); run as root to install them"
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- toolchains ---------------------------------------------------------------------------------
find_go() {
  GO=$(command -v go || true)
  [ -z "$GO" ] && [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go
  if [ -z "$GO" ]; then
    deb_install golang-go
    GO=/usr/bin/go
  fi
  # go.mod says 1.19 (Debian 12's golang-go); never fetch another toolchain, the apps need none.
  export GOTOOLCHAIN=local GOPROXY=off
  GO_ID=$("$GO" version)
}

java_major() { "$1" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p'; }

find_java() {
  JAVA=""
  local candidates=() c
  [ -n "${JAVA_HOME:-}" ] && candidates+=("$JAVA_HOME/bin/java")
  c=$(command -v java || true)
  [ -n "$c" ] && candidates+=("$c")
  candidates+=(/usr/lib/jvm/*/bin/java)
  for c in "${candidates[@]}"; do
    [ -x "$c" ] || continue
    if [ "$(java_major "$c")" -ge 17 ] 2>/dev/null && [ -x "$(dirname "$c")/javac" ]; then
      JAVA=$(readlink -f "$c")
      break
    fi
  done
  if [ -z "$JAVA" ]; then
    # Debian 13 ships 21, Debian 12 ships 17; either runs Spring Boot 4.
    local pkg=openjdk-17-jdk-headless
    apt-cache show openjdk-21-jdk-headless >/dev/null 2>&1 && pkg=openjdk-21-jdk-headless
    deb_install "$pkg"
    find_java_after_install
  fi
  export JAVA_HOME=${JAVA%/bin/java}
  command -v mvn >/dev/null || deb_install maven
  # Whole outputs are captured before they are cut: with pipefail, `mvn -v | head -1` fails
  # whenever head exits while mvn is still writing (SIGPIPE).
  local java_v mvn_v
  java_v=$("$JAVA" -version 2>&1)
  mvn_v=$(mvn -B -Dstyle.color=never -v 2>/dev/null)
  JAVA_ID="${java_v//$'\n'/ } / ${mvn_v%%$'\n'*}"
}

find_java_after_install() {
  local c
  for c in /usr/lib/jvm/*/bin/java; do
    if [ "$(java_major "$c")" -ge 17 ] 2>/dev/null; then
      JAVA=$(readlink -f "$c")
      return
    fi
  done
  die "no JDK >= 17 found after installing one"
}

find_python() {
  PY=$(command -v python3 || true)
  if [ -z "$PY" ]; then
    deb_install python3 python3-venv
    PY=/usr/bin/python3
  fi
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
    die "$("$PY" --version) is older than 3.9 (Pillow 11 needs 3.9+)"
  # Debian splits venv and ensurepip out of python3.
  if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    deb_install python3-venv
  fi
  PY_ID="$("$PY" -c 'import sys; print(sys.executable, sys.version)')"
}

# --- cache --------------------------------------------------------------------------------------
# 16 hex digits of the SHA-256 over the app's files (path and content) and the toolchain id.
content_hash() {
  local dir=$1 toolchain=$2
  {
    printf '%s\n' "$toolchain"
    (cd "$dir" && find . -type f ! -path './target/*' ! -name '*.pyc' ! -path '*/__pycache__/*' |
      LC_ALL=C sort | while read -r f; do
        printf '%s\n' "$f"
        sha256sum <"$f"
      done)
  } | sha256sum | cut -c1-16
}

# Sets OUT to the app's cache directory; returns 0 when a finished build is there already.
cached() {
  local app=$1 toolchain=$2
  OUT=$CACHE/$app/$(content_hash "$SRC/$app" "$toolchain")
  [ -f "$OUT/.complete" ]
}

# A finished build is marked last; older versions of the app are dropped.
complete() {
  local app=$1
  touch "$OUT/.complete"
  find "$CACHE/$app" -mindepth 1 -maxdepth 1 -type d ! -path "$OUT" -exec rm -rf {} +
}

fresh_out() { rm -rf "$OUT"; mkdir -p "$OUT/bin"; }

build_go() {
  local app=$1
  fresh_out
  (cd "$SRC/$app" && "$GO" build -trimpath -o "$OUT/bin/$app" .)
}

build_springboot() {
  local app=springboot-app
  fresh_out
  # Maven writes target/ next to the pom: build a copy so the source tree stays clean.
  cp -r "$SRC/$app" "$OUT/src"
  rm -rf "$OUT/src/target"
  (cd "$OUT/src" && mvn -B -q -Dstyle.color=never -DskipTests package)
  mv "$OUT/src/target/$app.jar" "$OUT/$app.jar"
  rm -rf "$OUT/src"
  # APP_VERSION=v1|v2 picks the behaviour; SERVER_ADDRESS/SERVER_PORT the listening socket.
  # C1 only: the app is tiny and the machine small, so start-up time is what matters.
  cat >"$OUT/bin/$app" <<EOF
#!/bin/sh
exec "$JAVA" \${JAVA_OPTS:--XX:TieredStopAtLevel=1} -jar "$OUT/$app.jar" "\$@"
EOF
  chmod +x "$OUT/bin/$app"
}

build_python() {
  local app=python-app-anticaptcha
  fresh_out
  # Built in place: a venv records its own absolute path.
  "$PY" -m venv "$OUT/venv"
  "$OUT/venv/bin/python" -m pip install -q --disable-pip-version-check -r "$SRC/$app/requirements.txt"
  cp "$SRC/$app/app.py" "$OUT/app.py"
  cat >"$OUT/bin/$app" <<EOF
#!/bin/sh
exec "$OUT/venv/bin/python" -u "$OUT/app.py" "\$@"
EOF
  chmod +x "$OUT/bin/$app"
}

# --- main ---------------------------------------------------------------------------------------
mkdir -p "$CACHE"
# Two runs at once (a test and scripts/test.sh) must not build into the same directory together.
exec 9>"$CACHE/.lock"
flock 9

find_go
find_java
find_python

declare -A BIN
for app in "${APPS[@]}"; do
  case $app in
    golang-*) toolchain=$GO_ID ;;
    springboot-app) toolchain=$JAVA_ID ;;
    python-*) toolchain=$PY_ID ;;
  esac
  start=$SECONDS
  if cached "$app" "$toolchain"; then
    log "$app: cached"
  else
    log "$app: building into $OUT"
    case $app in
      golang-*) build_go "$app" >&2 ;;
      springboot-app) build_springboot >&2 ;;
      python-*) build_python >&2 ;;
    esac
    complete "$app"
    log "$app: built in $((SECONDS - start))s"
  fi
  [ -x "$OUT/bin/$app" ] || die "$app: $OUT/bin/$app missing after the build"
  BIN[$app]=$OUT/bin/$app
done

{
  for app in "${APPS[@]}"; do
    var=$(printf '%s' "$app" | tr 'a-z-' 'A-Z_')
    printf 'SEED_APP_%s=%s\n' "$var" "${BIN[$app]}"
  done
} >"$CACHE/paths.env"
for app in "${APPS[@]}"; do
  printf 'seed-app %s %s\n' "$app" "${BIN[$app]}"
done
