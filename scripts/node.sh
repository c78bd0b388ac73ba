#!/usr/bin/env bash
# One real Kubernetes node on this machine: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler (control plane on loopback, as tests/harness/kube starts it), containerd + runc, and
# a kubelet whose pods get their network from Debian's CNI plugins on a bridge of their own.
#
#   scripts/node.sh up       build/check the binaries, import the local images, start everything
#   scripts/node.sh deploy   build the agent's image, `kubectl apply -f deploy/`, wait until Ready
#   scripts/node.sh status   what runs, the node and its pods
#   scripts/node.sh seed-images  the seed apps' images (wardenlym/<app>:v1, ...), so that
#                            `kubectl apply -f examples/seed/artifacts/apps` runs them unchanged
#   scripts/node.sh tag-agent TAG   meshpath:latest also as meshpath:TAG (a rolling update's image)
#   scripts/node.sh down     stop what `up` started (by pid) and remove its mounts, cgroups,
#                            network namespaces, bridge, pins and directories
#   scripts/node.sh env      KUBECONFIG=... and the node's settings, for `eval`
#
# Everything lives under $MESHPATH_NODE_DIR (default /tmp/meshpath-node). The kubelet lays out its
# pod cgroups at the top of every cgroup hierarchy (`kubepods`, the default --cgroup-root=/ that
# meshpath's `--cgroup auto` expects), so only one node may run on a machine: `up` refuses while
# another's kubepods exists. Run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

K8S_VERSION=v1.36.3
DIR=${MESHPATH_NODE_DIR:-/tmp/meshpath-node}
KUBE_BINS=${MESHPATH_KUBE_BIN_DIR:-$REPO/target/kube/$K8S_VERSION}
NODE_BINS=${MESHPATH_NODE_BIN_DIR:-$REPO/target/node-bins}
CNI_BINS=/usr/lib/cni
# The cgroup v2 tree: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a hybrid one.
CG2=/sys/fs/cgroup
[ "$(stat -f -c %T $CG2)" = cgroup2fs ] || CG2=/sys/fs/cgroup/unified

log() { printf 'node: %s\n' "$*" >&2; }
die() { printf 'node: error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=lib/node-proc.sh
source scripts/lib/node-proc.sh
# shellcheck source=lib/node-conf.sh
source scripts/lib/node-conf.sh

# The pod network: the first /24 of these that no route of the machine overlaps (the machine's own
# addresses, other tests' veths). The bridge's address is the node's IP.
pick_pod_cidr() {
  local c
  for c in 10.213.0 10.214.0 10.215.0 172.30.213 172.31.213; do
    if ! ip -4 route show | awk '{print $1}' | grep -q "^${c%.*}\."; then
      echo "$c"
      return
    fi
  done
  die "every candidate pod network overlaps a route of this machine (ip -4 route)"
}

up() {
  local t0=$SECONDS
  [ "$(id -u)" -eq 0 ] || die "run as root (the kubelet and containerd manage mounts and cgroups)"
  [ -e "$DIR/id" ] && die "$DIR exists: a node is up or was not taken down (scripts/node.sh down)"
  [ -d "$CG2/kubepods" ] && die "$CG2/kubepods exists: another kubelet runs on this machine"
  bash scripts/kube-bins.sh
  bash scripts/node-bins.sh
  mkdir -p "$DIR"/{pids,logs,pki}
  # From here on a failure (a failed command or die) tears down what was started, unless
  # MESHPATH_NODE_KEEP=1 keeps it for a look.
  trap 'up_failed' EXIT

  ID=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
  NET=$(pick_pod_cidr)
  BRIDGE=mpn$ID
  NODE_IP=$NET.1
  NODE_NAME=mpn-$ID
  APISERVER_PORT=$(free_port)
  PIN_DIR=/sys/fs/bpf/mpn-$ID
  RUN_CONTAINERD_OURS=0
  [ -d /run/containerd ] || RUN_CONTAINERD_OURS=1
  write_state
  pki "$DIR/pki"

  local etcd_port peer_port
  etcd_port=$(free_port)
  peer_port=$(free_port)
  spawn etcd "$KUBE_BINS/etcd" --name=node --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="node=http://127.0.0.1:$peer_port" --log-level=warn --unsafe-no-fsync
  wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"
  start_apiserver "$etcd_port"
  wait_for kube-apiserver 90 curl -fsS --cacert "$DIR/pki/ca.crt" "https://127.0.0.1:$APISERVER_PORT/readyz"
  kubeconfig >"$DIR/kubeconfig"
  start_controllers
  wait_for "the default ServiceAccount" 60 kc get serviceaccount default -n default

  # The bridge exists before the kubelet: its address is the node IP the kubelet checks for, and
  # the CNI bridge plugin adopts a bridge that is already there.
  # A MAC of its own: otherwise the bridge takes its lowest port's, which changes as pods come
  # and go and leaves the pods' neighbour entry for the node IP pointing nowhere for 15-45 s.
  ip link add "$BRIDGE" address 02:00:0a:d5:00:01 type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  cni_conf
  containerd_conf
  spawn containerd "$NODE_BINS/containerd" --config "$DIR/containerd.toml"
  wait_for containerd 30 ctr version
  bash scripts/node-images.sh import "$DIR"
  kubelet_conf
  spawn kubelet "$NODE_BINS/kubelet" --config="$DIR/kubelet.yaml" --kubeconfig="$DIR/kubeconfig" \
    --root-dir="$DIR/kubelet" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
  wait_for "node $NODE_NAME Ready" 120 node_ready
  trap - EXIT
  log "up in $((SECONDS - t0)) s: node $NODE_NAME ($NODE_IP, pods $NET.0/24 on $BRIDGE)"
  log "use it: eval \"\$(scripts/node.sh env)\"; kubectl get nodes"
}

up_failed() {
  if [ "${MESHPATH_NODE_KEEP:-0}" = 1 ]; then
    log "up failed; kept $DIR (MESHPATH_NODE_KEEP=1): scripts/node.sh down removes it"
  else
    log "up failed; taking down what was started (logs are lost: MESHPATH_NODE_KEEP=1 keeps them)"
    down_all || true
  fi
}

node_ready() {
  [ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# Stops everything in the reverse order of `up`, each step tolerating what is already gone, so it
# also cleans up after an `up` that failed halfway or a machine that lost its processes.
down_all() {
  load_state || return 0
  local t0=$SECONDS
  stop kubelet
  step "kubelet stopped"
  # The CRI plugin's containers, then the shims: a shim outlives containerd by design.
  local ids=""
  if alive containerd; then
    local t
    ids=$(ctr -n k8s.io containers ls -q 2>/dev/null || true)
    for t in $(ctr -n k8s.io tasks ls -q 2>/dev/null); do ctr -n k8s.io tasks kill -s KILL "$t" >/dev/null 2>&1 || true; done
    sleep_until 10 no_running_tasks || true
  fi
  step "containers killed"
  stop containerd
  kill_shims
  remove_shim_sockets $ids
  step "containerd and shims stopped"
  # The apiserver before etcd: with etcd gone its shutdown hangs retrying it.
  stop kube-scheduler kube-controller-manager kube-apiserver
  stop etcd
  step "control plane stopped"
  unmount_under "$DIR"
  remove_cgroups
  step "mounts and cgroups removed"
  [ -n "${BRIDGE:-}" ] && ip link del "$BRIDGE" 2>/dev/null || true
  [ -n "${PIN_DIR:-}" ] && rm -rf "$PIN_DIR"
  restore_bpffs
  step "bridge and pins removed"
  rm -rf "$DIR"
  log "down in $((SECONDS - t0)) s: $DIR removed"
}

# The agent's DaemonSet from deploy/, as a user applies it, with what this machine needs changed:
# the cgroup v2 tree's place (hybrid machines mount it at unified/), a pin directory of this node's
# own, and the API server's loopback address (no kube-proxy or endpoint reconciler here gives the
# `kubernetes` Service an endpoint). DNS capture is on: there is no cluster DNS here, and the
# pods (the seed's apps) resolve Service names through the agent. The image is built from this
# tree (node-images.sh).
deploy() {
  load_state || die "no node at $DIR"
  bash scripts/node-images.sh import-agent "$DIR"
  # Bidirectional and HostToContainer propagation need the host path on a shared mount, as
  # systemd machines mount everything; made so only while the node is up.
  # The mounts at /sys/fs/bpf now: `down` removes any stacked on them later (see restore_bpffs).
  [ -f "$DIR/bpffs-mounts" ] || awk '$5 == "/sys/fs/bpf" {print $1}' /proc/self/mountinfo >"$DIR/bpffs-mounts"
  if ! awk '$5 == "/sys/fs/bpf"' /proc/self/mountinfo | grep -q 'shared:'; then
    mount --make-shared /sys/fs/bpf
    touch "$DIR/bpffs-made-shared"
  fi
  local mnt=/host/cgroup${CG2#/sys/fs/cgroup}
  for f in deploy/*.yaml; do
    if [ "$(basename "$f")" = 30-daemonset.yaml ]; then
      sed -e "s#--cgroup-mount=/host/cgroup\$#--cgroup-mount=$mnt#" -e "s#--pin-dir=/sys/fs/bpf/meshpath#--pin-dir=$PIN_DIR#" "$f" |
        kc set env --local -f - -o yaml KUBERNETES_SERVICE_HOST=127.0.0.1 \
          KUBERNETES_SERVICE_PORT="$APISERVER_PORT" MESHPATH_PIN_DIR="$PIN_DIR" MESHPATH_DNS_CAPTURE=true |
        kc apply -f -
    else
      kc apply -f "$f"
    fi
  done
  kc -n meshpath-system rollout status ds/meshpath --timeout=180s
}

# A bpffs mounted over the host's while the node was up (the init container mounts one when its
# check misjudges the host's) hides every other user's pins: unmount each one found on top of the
# mounts recorded at deploy, then make the host's private again if deploy made it shared.
restore_bpffs() {
  [ -f "$DIR/bpffs-mounts" ] || return 0
  local top
  while top=$(awk '$5 == "/sys/fs/bpf" {print $1}' /proc/self/mountinfo | tail -n1) &&
    [ -n "$top" ] && ! grep -qx "$top" "$DIR/bpffs-mounts"; do
    log "unmounting a bpffs stacked on /sys/fs/bpf while the node was up (mount id $top)"
    umount /sys/fs/bpf || break
  done
  if [ -e "$DIR/bpffs-made-shared" ]; then mount --make-private /sys/fs/bpf; fi
}

step() { log "down: $1 ($((SECONDS - t0)) s)"; }

no_running_tasks() { ! ctr -n k8s.io tasks ls 2>/dev/null | grep -q RUNNING; }

# A second tag of the agent's image, for a rolling update without rebuilding it:
# `kubectl -n meshpath-system set image ds/meshpath agent=meshpath:TAG mount-bpffs=meshpath:TAG`.
tag_agent() {
  load_state || die "no node at $DIR"
  [ -n "${1:-}" ] || die "usage: scripts/node.sh tag-agent TAG"
  ctr -n k8s.io images tag --force docker.io/library/meshpath:latest "docker.io/library/meshpath:$1" >/dev/null
  log "tagged docker.io/library/meshpath:$1"
}

status() {
  load_state || { log "no node at $DIR"; return 1; }
  local n
  for n in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet; do
    if alive "$n"; then printf '%-24s pid %s\n' "$n" "$(cat "$DIR/pids/$n")"; else printf '%-24s not running\n' "$n"; fi
  done
  kc get nodes -o wide || true
  kc get pods -A -o wide || true
}

case "${1:-}" in
up) up ;;
deploy) deploy ;;
down) down_all ;;
status) status ;;
seed-images)
  load_state || die "no node at $DIR"
  bash scripts/node-images.sh import-seed "$DIR"
  ;;
tag-agent) tag_agent "${2:-}" ;;
env)
  load_state || die "no node at $DIR"
  printf 'export KUBECONFIG=%q MESHPATH_NODE_DIR=%q MESHPATH_NODE_NAME=%q MESHPATH_NODE_IP=%q\n' \
    "$DIR/kubeconfig" "$DIR" "$NODE_NAME" "$NODE_IP"
  printf 'export PATH=%q:%q:$PATH\n' "$KUBE_BINS" "$NODE_BINS"
  printf 'export CONTAINERD_ADDRESS=%q\n' "$DIR/containerd/containerd.sock"
  ;;
*) die "usage: scripts/node.sh up|deploy|down|status|seed-images|tag-agent TAG|env (MESHPATH_NODE_DIR=$DIR)" ;;
esac
