#!/usr/bin/env bash
# Prints the path of a Python that has the `prometheus_client` package (its text-format parser
# checks the agent's metrics in the tests), creating a venv under target/ once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/promvenv
if ! "$VENV/bin/python" -c 'import prometheus_client' 2>/dev/null; then
  # A fresh Debian has python3 without the venv module (package python3-venv).
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "prom-python: installing Debian's python3-venv" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >&2
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q prometheus-client >&2
fi
printf '%s\n' "$(pwd)/$VENV/bin/python"
