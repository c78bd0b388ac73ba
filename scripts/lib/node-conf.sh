# Sourced by scripts/node.sh: command lines and configuration files of the node's components.
# Needs the state variables of node-proc.sh, DIR, KUBE_BINS, NODE_BINS, CNI_BINS.

SERVICE_CIDR=10.96.0.0/16
# The pause image every pod sandbox runs; built and imported by scripts/node-images.sh.
PAUSE_IMAGE=meshpath.local/pause:1

# As the harness starts it (tests/harness/kube/components.rs): loopback only, token auth, RBAC.
# The node's name resolves nowhere, so the apiserver reaches the kubelet (exec, logs) at its IP.
start_apiserver() {
  local p=$DIR/pki
  spawn kube-apiserver "$KUBE_BINS/kube-apiserver" --etcd-servers="http://127.0.0.1:$1" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --endpoint-reconciler-type=none --shutdown-watch-termination-grace-period=2s \
    --tls-cert-file="$p/serving.crt" --tls-private-key-file="$p/serving.key" --client-ca-file="$p/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$p/sa.pub" \
    --service-account-signing-key-file="$p/sa.key" --token-auth-file="$p/tokens.csv" \
    --authorization-mode=RBAC --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true \
    --cert-dir="$DIR/apiserver-certs" --kubelet-preferred-address-types=InternalIP
}

start_controllers() {
  # The cloud and node-CIDR controllers have nothing to do here: pod addresses come from the CNI
  # config's host-local range, not from the node's podCIDR.
  spawn kube-controller-manager "$KUBE_BINS/kube-controller-manager" --kubeconfig="$DIR/kubeconfig" \
    --leader-elect=false --secure-port=0 \
    --controllers='*,-node-ipam-controller,-cloud-node-lifecycle-controller,-node-route-controller,-service-lb-controller' \
    --root-ca-file="$DIR/pki/ca.crt" --service-account-private-key-file="$DIR/pki/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR"
  spawn kube-scheduler "$NODE_BINS/kube-scheduler" --kubeconfig="$DIR/kubeconfig" --leader-elect=false \
    --secure-port=0
}

# One bridge, host-local addresses. isGateway stays false: with it the bridge plugin turns on the
# machine-wide ip_forward; the gateway address is on the bridge already (node.sh up), and pods
# route through it explicitly.
cni_conf() {
  mkdir -p "$DIR/cni/net.d" "$DIR/cni/ipam"
  cat >"$DIR/cni/net.d/10-meshpath-node.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "meshpath-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$DIR/cni/ipam",
        "ranges": [[{"subnet": "$NET.0/24", "rangeStart": "$NET.10", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0", "gw": "$NODE_IP"}]
      }
    }
  ]
}
EOF
}

containerd_conf() {
  local c=$DIR/containerd RESTRICT_OOM=false
  # Bit 24 of the bounding set is CAP_SYS_RESOURCE.
  (( 0x$(awk '/^CapBnd/ {print $2}' /proc/self/status) >> 24 & 1 )) || RESTRICT_OOM=true
  mkdir -p "$c"
  cat >"$DIR/containerd.toml" <<EOF
version = 3
root = "$c/root"
state = "$c/state"
# NRI would listen on a fixed machine-wide socket; nothing here uses it.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "$c/opt"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"

[plugins.'io.containerd.cri.v1.runtime']
  # Pod network namespaces under the state dir, not /var/run/netns, so teardown finds them all.
  netns_mounts_under_state_dir = true
  # Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which root may lack (it does on
  # sandboxed VMs): the pause container's -998 then fails every sandbox with "failed to update
  # /proc/self/oom_score_adj: Permission denied". This clamps scores to containerd's own.
  restrict_oom_score_adj = $RESTRICT_OOM
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$NODE_BINS/runc"
        Root = "$c/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$CNI_BINS"]
    conf_dir = "$DIR/cni/net.d"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
}

kubelet_conf() {
  cat >"$DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# No systemd on this kind of machine: the kubelet manages cgroups through the filesystem.
cgroupDriver: cgroupfs
# cgroup v1 (or hybrid) machines are refused by default since 1.35; this keeps them usable.
failCgroupV1: false
containerRuntimeEndpoint: unix://$DIR/containerd/containerd.sock
podLogsDir: $DIR/pod-logs
# Serve on the node's own bridge address, on ports no other kubelet of the machine holds.
address: $NODE_IP
port: $(free_port)
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(free_port)
# The apiserver reaches the kubelet (logs, exec) without a client certificate on this
# single-machine node.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
failSwapOn: false
# The machine's disk is shared: evict only when it is really full, never GC images we imported.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
}
