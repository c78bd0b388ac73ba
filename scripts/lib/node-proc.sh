# Sourced by scripts/node.sh: the node's state file, its processes (started, checked and stopped by
# the pid and start time recorded at spawn, never by name), PKI, and the teardown helpers.
# Needs DIR, KUBE_BINS, NODE_BINS, CG2, log and die.

STATE_VARS="ID NET BRIDGE NODE_IP NODE_NAME APISERVER_PORT PIN_DIR RUN_CONTAINERD_OURS"

write_state() {
  local v
  for v in $STATE_VARS; do printf '%s=%q\n' "$v" "${!v:-}"; done >"$DIR/state"
  printf '%s\n' "$ID" >"$DIR/id"
}

load_state() {
  [ -f "$DIR/state" ] || return 1
  # shellcheck disable=SC1091
  source "$DIR/state"
}

kc() { "$KUBE_BINS/kubectl" --kubeconfig "$DIR/kubeconfig" "$@"; }
ctr() { "$NODE_BINS/ctr" --address "$DIR/containerd/containerd.sock" "$@"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Field 22 of /proc/<pid>/stat: tells a recycled pid from the process we started.
start_time() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }

# spawn NAME CMD...: starts CMD in its own session (it outlives this script), logs to
# logs/NAME.log, records "pid starttime" in pids/NAME.
spawn() {
  local name=$1
  shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  local pid=$!
  printf '%s %s\n' "$pid" "$(start_time "$pid")" >"$DIR/pids/$name"
  log "started $name (pid $pid)"
}

# alive NAME: the recorded process still runs (same pid and start time).
alive() {
  local pid st
  [ -f "$DIR/pids/$1" ] || return 1
  read -r pid st <"$DIR/pids/$1"
  [ -n "$pid" ] && [ "$(start_time "$pid")" = "$st" ]
}

# stop NAME...: SIGTERM to each at once, up to 20 s for all to exit, then SIGKILL to the rest.
stop() {
  local n pid left=()
  for n in "$@"; do
    alive "$n" || continue
    read -r pid _ <"$DIR/pids/$n"
    kill -TERM "$pid" 2>/dev/null || true
    left+=("$n")
  done
  [ "${#left[@]}" -gt 0 ] || return 0
  sleep_until 20 none_alive "${left[@]}" && return 0
  for n in "${left[@]}"; do
    alive "$n" || continue
    log "$n ignored SIGTERM; killing it"
    read -r pid _ <"$DIR/pids/$n"
    kill -KILL "$pid" 2>/dev/null || true
  done
  sleep_until 5 none_alive "${left[@]}" || true
}

none_alive() {
  local n
  for n in "$@"; do ! alive "$n" || return 1; done
}

# sleep_until SECONDS CMD...: polls CMD every 0.2 s until it succeeds or time runs out.
sleep_until() {
  local end=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.2
  done
}

# wait_for WHAT SECONDS CMD...: like sleep_until, but fails with the logs of what has died.
wait_for() {
  local what=$1 secs=$2
  shift 2
  if ! sleep_until "$secs" "$@"; then
    local f
    for f in "$DIR"/pids/*; do
      alive "$(basename "$f")" || { log "$(basename "$f") is not running; its log:"; tail -n 30 "$DIR/logs/$(basename "$f").log" >&2 || true; }
    done
    die "$what not ready within $secs s (logs: $DIR/logs/)"
  fi
  log "$what ready"
}

# The shims of our containerd (a shim outlives containerd by design): found by their binary and
# the containerd address on their command line, so another runtime's shims are never touched.
kill_shims() {
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    [ "$exe" = "$NODE_BINS/containerd-shim-runc-v2" ] || continue
    tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "-address $DIR/containerd/containerd.sock" || continue
    kill -KILL "${p#/proc/}" 2>/dev/null || true
  done
}

# A shim's socket is /run/containerd/s/<sha256 of "<containerd address>/<namespace>/<id>">, a
# directory fixed at build time, not below DIR; a killed shim leaves it behind. The two directories
# go too when `up` created them (no other containerd on the machine).
remove_shim_sockets() {
  local id
  for id in "$@"; do
    rm -f "/run/containerd/s/$(printf '%s' "$DIR/containerd/containerd.sock/k8s.io/$id" | sha256sum | cut -d' ' -f1)"
  done
  if [ "${RUN_CONTAINERD_OURS:-}" = 1 ]; then
    rmdir /run/containerd/s /run/containerd 2>/dev/null || true
  fi
}

# Every mount below DIR (kubelet volumes, containerd snapshots and shm, netns bind mounts),
# deepest first.
unmount_under() {
  local m
  awk -v d="$1/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
}

# The kubelet's kubepods tree in every hierarchy. Processes still in it are pods' processes of our
# kubelet whose shim died first: killed by pid, then the directories removed deepest first.
remove_cgroups() {
  local h procs
  for h in /sys/fs/cgroup/*/kubepods "$CG2/kubepods"; do
    [ -d "$h" ] || continue
    procs=$(find "$h" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [ -n "$procs" ] && kill -KILL $procs 2>/dev/null || true
    sleep_until 10 eval "find '$h' -depth -type d -exec rmdir {} + ; [ ! -d '$h' ]" ||
      log "could not remove $h: $(find "$h" -name cgroup.procs -exec cat {} + 2>/dev/null | wc -l) processes left"
  done
}

# CA, the apiserver's serving certificate, the service-account key and an admin token, as the
# harness makes them (tests/harness/kube/pki.rs).
pki() {
  local d=$1
  cat >"$d/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[serving]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,IP:10.96.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
authorityKeyIdentifier = keyid
EOF
  (
    cd "$d"
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 -config openssl.cnf -extensions ca "${ec[@]}" -days 2 -subj /CN=meshpath-node-ca \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -new -config openssl.cnf "${ec[@]}" -subj /CN=kube-apiserver -keyout serving.key -out serving.csr 2>/dev/null
    openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile openssl.cnf -extensions serving -out serving.crt 2>/dev/null
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    printf '%s,meshpath-node-admin,meshpath-node-admin,"system:masters"\n' \
      "$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >tokens.csv
  )
}

kubeconfig() {
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: meshpath-node
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $DIR/pki/ca.crt
users:
- name: admin
  user:
    token: $(cut -d, -f1 "$DIR/pki/tokens.csv")
contexts:
- name: meshpath-node
  context: {cluster: meshpath-node, user: admin}
current-context: meshpath-node
EOF
}
