#!/usr/bin/env bash
# The seed's walk-through (examples/seed/): installs what this machine lacks (idempotent; the
# first run builds the Kubernetes binaries, the seed's four apps and Jaeger into caches), then
# `cargo xtask demo`: a local Kubernetes node (etcd, kube-apiserver, kube-controller-manager and
# a kubelet loop running the seed's Deployments as processes in their own netns and cgroup),
# meshpath with --source kube and its node proxy, `kubectl apply -f examples/seed/artifacts/apps`,
# and every scenario of the seed with its real output and a PASS/FAIL verdict.
# Everything it starts is stopped and removed at the end, on an error and on Ctrl-C. Run as root.
#
#   sudo bash scripts/demo.sh                 # every scenario
#   sudo bash scripts/demo.sh --list          # the scenarios
#   sudo bash scripts/demo.sh weights jason   # only these
#   sudo bash scripts/demo.sh --quick         # the 7 s delay injection shortened to 1 s
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do
  if [ "$arg" = --list ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
    exec cargo xtask demo --list
  fi
done
bash scripts/setup.sh
bash scripts/kube-bins.sh
bash scripts/seed-apps.sh >/dev/null
# The trace is read back from a real Jaeger (built once into a cache).
MESHPATH_JAEGER=${MESHPATH_JAEGER:-$(bash scripts/jaeger.sh)}
export MESHPATH_JAEGER
export PATH="$HOME/.cargo/bin:$PATH"
# Ctrl-C reaches the demo (it ends the step under way, then stops and removes what it started);
# the control plane, the agent and the pods run in process groups of their own, so it does not
# reach them first.
exec cargo xtask demo "$@"
