#!/usr/bin/env bash
# Prints the path of a headless-capable Chromium (Debian's `chromium` package), installing it once
# when missing. The service-graph UI test loads the agent's /ui page in it. Idempotent; run as root
# on Debian (it may install packages). Waits for the dpkg lock rather than failing on it.
set -euo pipefail

find_chromium() { command -v chromium || true; }

BIN=$(find_chromium)
if [ -z "$BIN" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "chromium: not installed and not root: cannot install the chromium package" >&2
    exit 1
  fi
  echo "chromium: installing Debian's chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  BIN=$(find_chromium)
fi
[ -n "$BIN" ] || { echo "chromium: no chromium binary after installing" >&2; exit 1; }
printf '%s\n' "$BIN"
