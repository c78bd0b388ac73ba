#!/usr/bin/env bash
# Prints the path of a Python that has the `prometheus_client` package (its text-format parser
# checks the agent's metrics in the tests), creating a venv under target/ once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/promvenv
if ! "$VENV/bin/python" -c 'import prometheus_client' 2>/dev/null; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q prometheus-client >&2
fi
printf '%s\n' "$(pwd)/$VENV/bin/python"
