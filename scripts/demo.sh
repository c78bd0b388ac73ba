#!/usr/bin/env bash
# Installs what this machine lacks (idempotent), then runs the demo on the embedded default source:
# a local netns "node" with the sample services of examples/manifests, the agent in manifests
# mode, and a request loop against a ClusterIP showing the backends taking turns. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
exec cargo xtask demo "$@"
