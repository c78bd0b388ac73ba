#!/usr/bin/env bash
# Installs what this machine lacks (idempotent), then runs every meshpath test: unit tests,
# in-process tests and the privileged tests that load real eBPF programs into per-run cgroups and
# network namespaces. Run as root. Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/kube-bins.sh
bash scripts/seed-apps.sh
# The tracing tests send spans to a real Jaeger (built once into a cache).
MESHPATH_JAEGER=$(bash scripts/jaeger.sh)
export MESHPATH_JAEGER
# The metrics tests parse the Prometheus text with prometheus_client's parser.
MESHPATH_PROM_PYTHON=$(bash scripts/prom-python.sh)
export MESHPATH_PROM_PYTHON
# The service-graph test loads the agent's /ui page in a real headless Chromium.
MESHPATH_CHROMIUM=$(bash scripts/chromium.sh)
export MESHPATH_CHROMIUM
# The socket-redirection tests run psql/pgbench against a real PostgreSQL.
MESHPATH_POSTGRES_BIN=$(bash scripts/postgres.sh)
export MESHPATH_POSTGRES_BIN
# The real-node test: kubelet, kube-scheduler, containerd and runc built once into target/node-bins
# (minutes when cold). A build that fails here is retried by the test, which then prints why it
# skipped instead of failing the whole run.
bash scripts/node-bins.sh || echo "test.sh: node-bins.sh failed; the real-node test will say why" >&2
export MESHPATH_REAL_NODE=1
export PATH="$HOME/.cargo/bin:$PATH"
exec cargo xtask test "$@"
