#!/usr/bin/env bash
# A real kubelet node beside the kwok nodes of the local control plane (tests/harness/cluster.sh):
# containerd + runc + CNI bridge from Debian, kubelet and kube-proxy built from the control plane's pinned
# Kubernetes module. Pods scheduled here really run; kwok manages only the nodes annotated
# kwok.x-k8s.io/node=fake (cluster.sh configures it so), never this one.
#
#   tests/harness/real_node.sh up      install packages if missing, build kubelet/kube-proxy if missing,
#                                      start containerd, kubelet, kube-proxy; wait for the node to be Ready
#   tests/harness/real_node.sh down    delete the node's pods, stop everything by PID, kube-proxy --cleanup,
#                                      delete the bridge (safe to run twice, or with nothing running)
#   tests/harness/real_node.sh purge   down, then delete the nodes' image stores and kubelet roots (about
#                                      4 GB per node once the serving image is in; logs stay)
#   tests/harness/real_node.sh import ARCHIVE...   import OCI archives into the node's containerd
#   tests/harness/real_node.sh env     print NODE/socket facts for tests
#
# The node advertises nvidia.com/gpu as an extended resource (a node status patch: there is no GPU and no
# device plugin; serving pods here run the agent's simulated device), carries the GPU labels and the GPU
# taint of the kwok GPU nodes, and a distinct product label so tests can pin pods to it. Needs root (network
# namespaces, iptables, mounts) and one real node per machine: the bridge, the kubelet port and the
# iptables rules are host-wide.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${GREENSERVE_STATE:-$REPO/.harness}"
KUBECONFIG_PATH="$STATE/kubeconfig"
ROOT="$STATE/node"
# Each node has its own containerd, CNI bridge gs<i> and pod subnet 10.244.<7+i>.0/24, kubelet and cgroup
# root; one kube-proxy serves them all (the iptables rules are host-wide anyway).
NODES="${GREENSERVE_REAL_NODES:-1}"
CLUSTER_CIDR=10.244.0.0/16
GPUS="${GREENSERVE_REAL_NODE_GPUS:-4}"
GPU_PRODUCT="${GREENSERVE_REAL_NODE_GPU_PRODUCT:-greenserve-real-node}"
# The sandbox ("pause") image, also the tests' plain image: Debian minbase + busybox, command `sleep infinity`.
BASE_IMAGE=localhost/greenserve/node-base:local
CACHE="${GREENSERVE_CACHE:-$HOME/.cache/greenserve}"
BIN="$(bash "$HERE/cluster.sh" bin)"
export PATH="$BIN:$PATH"

select_node() {  # i: set the per-node names
    I="$1"
    NODE="real-node-$I"
    BRIDGE="gs$I"
    # The bridge's address is the node IP (the kubelet refuses a loopback node IP) and the pods' gateway.
    NODE_IP="10.244.$((7 + I)).1"
    POD_CIDR="10.244.$((7 + I)).0/24"
    S="$ROOT/$I"
    SOCK="$S/run/containerd.sock"
    CGROUP_ROOT="/greenserve-$NODE"
}
select_node 0

log() { printf '[real-node %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
kc() { kubectl --kubeconfig "$KUBECONFIG_PATH" "$@"; }
ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }
alive() { [[ -f "$S/$1.pid" ]] && kill -0 "$(cat "$S/$1.pid")" 2>/dev/null; }

ensure_packages() {
    local missing=() p
    for p in containerd runc containernetworking-plugins iptables conntrack mmdebstrap; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]} from Debian"
    local sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo -n"
    # The containerd package's service must not start a system containerd: policy-rc.d denies it.
    local added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d && -z "$sudo" ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
    fi
    $sudo apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q -o DPkg::Lock::Timeout=600 \
        --no-install-recommends "${missing[@]}" >&2
    ((added_policy == 0)) || rm -f /usr/sbin/policy-rc.d
}

# Nothing can be pulled here, so the base image is built once from a Debian rootfs and cached outside the
# clone, keyed by its recipe (this function and rootfs_oci.py).
base_archive() {
    local key dir
    key="$( { declare -f base_archive; cat "$HERE/rootfs_oci.py"; echo "$BASE_IMAGE"; } | sha256sum | cut -c1-16)"
    dir="$CACHE/images/node-base-$key"
    if [[ ! -f "$dir/image.oci.tar" ]]; then
        mkdir -p "$dir"
        log "building the node's base image (Debian bookworm minbase + busybox, once)"
        mmdebstrap --variant=minbase --include=busybox --quiet bookworm "$dir/rootfs.tar" >&2
        python3 "$HERE/rootfs_oci.py" --out "$dir/image.oci.tar" --name "$BASE_IMAGE" \
            --cmd sleep --cmd infinity "$dir/rootfs.tar" >/dev/null
        rm -f "$dir/rootfs.tar"
    fi
    echo "$dir/image.oci.tar"
}

write_configs() {  # of the selected node
    mkdir -p "$S"/{containerd/root,containerd/state,run,cni/conf,cni/ipam,kubelet/root,kubelet/pki,logs,pod-logs}
    cat >"$S/containerd.toml" <<EOF
version = 2
root = "$S/containerd/root"
state = "$S/containerd/state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$S/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$BASE_IMAGE"
  # Without it runc fails ("can't get final child's PID from pipe: EOF"): the sandbox's oom_score_adj
  # of -998 needs CAP_SYS_RESOURCE, which root lacks on these machines.
  restrict_oom_score_adj = true
  # Pod network namespaces under the state folder, so teardown finds every one of them.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$S/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$S/cni/conf"
EOF
    cat >"$S/cni/conf/10-$BRIDGE.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$BRIDGE",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$S/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
    cat >"$S/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The API server reaches the kubelet (logs, exec) on the node IP; each node has its own.
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $((10248 + 1000 * I))
cgroupDriver: cgroupfs
# Kubelets on one machine must not garbage-collect each other's pod cgroups or log folders.
cgroupRoot: $CGROUP_ROOT
podLogsDir: $S/pod-logs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$SOCK
enforceNodeAllocatable: []
evictionHard: {}
localStorageCapacityIsolation: false
# Local images only: never garbage-collect them (they cannot be pulled again).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 40
volumePluginDir: $S/kubelet/volume-plugins
# A local test node: anonymous access on the node IP only, which nothing outside this machine reaches.
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}, x509: {}}
authorization: {mode: AlwaysAllow}
registerWithTaints:
- {key: nvidia.com/gpu, value: present, effect: NoSchedule}
EOF
}

cgroup_dirs() {  # the selected node's cgroup root in every v1 hierarchy (and the v2 one, if any)
    local h
    for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
        [[ -e "$h/cgroup.procs" ]] && echo "${h%/}$CGROUP_ROOT"
    done
}

setup_host() {  # of the selected node: bridge, forwarding, cgroup root
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
    fi
    ip addr replace "$NODE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    sysctl -qw net.ipv4.ip_forward=1
    # Pod -> Service -> pod on the same bridge must pass iptables for kube-proxy's DNAT to be undone.
    [[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || sysctl -qw net.bridge.bridge-nf-call-iptables=1
    local d
    for d in $(cgroup_dirs); do mkdir -p "$d"; done
}

start_bg() {  # name, command...: start detached, record the PID, log to $S/logs/name.log
    local name="$1"; shift
    nohup "$@" >"$S/logs/$name.log" 2>&1 &
    echo $! >"$S/$name.pid"
}

wait_for() {  # what, seconds, command...: poll until the command succeeds
    local what="$1" secs="$2"; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what not ready after ${secs}s (logs in $S/logs)"
        sleep 1
    done
}

node_dirs() { local d; for d in "$ROOT"/*/; do [[ -d "$d" ]] && basename "$d"; done; }

cmd_import() {  # into every running node's containerd
    local i a
    for i in $(node_dirs); do
        select_node "$i"
        alive containerd || continue
        for a in "$@"; do
            ctr_ images import "$a" >/dev/null ||
                die "importing $a into $NODE failed; free space under $S: $(df -h --output=avail "$S" | tail -1)"
        done
    done
}

node_ready() {
    [[ "$(kc get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

node_has_gpus() {
    [[ "$(kc get node "$NODE" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" == "$GPUS" ]]
}

start_node() {  # the selected node: containerd, base image, kubelet
    write_configs
    setup_host
    if ! alive containerd; then
        start_bg containerd containerd --config "$S/containerd.toml"
        wait_for "containerd of $NODE" 30 ctr_ version
    fi
    local base
    base="$(base_archive)"
    ctr_ images ls -q | grep -qx "$BASE_IMAGE" || ctr_ images import "$base" >/dev/null
    if ! alive kubelet; then
        start_bg kubelet kubelet --config "$S/kubelet.yaml" --kubeconfig "$KUBECONFIG_PATH" \
            --root-dir "$S/kubelet/root" --cert-dir "$S/kubelet/pki" --hostname-override "$NODE" \
            --node-ip "$NODE_IP" --v 1 \
            --node-labels "nvidia.com/gpu.present=true,nvidia.com/gpu.product=$GPU_PRODUCT,nvidia.com/gpu.count=$GPUS,greenserve.io/real-node=true"
    fi
    wait_for "node $NODE registration" 60 kc get node "$NODE"
    # Extended resources are advertised through the node's status (there is no device plugin); the
    # kubelet keeps them and derives allocatable.
    kc patch node "$NODE" --subresource=status --type=merge \
        -p "{\"status\":{\"capacity\":{\"nvidia.com/gpu\":\"$GPUS\"}}}" >/dev/null
}

cmd_up() {
    [[ "$(id -u)" == 0 ]] || die "needs root (network namespaces, iptables, mounts)"
    [[ -f "$KUBECONFIG_PATH" ]] || die "no control plane: run tests/harness/cluster.sh up first"
    ((${#SOCK} < 100)) || die "state path too long for a unix socket: $SOCK (set GREENSERVE_STATE)"
    select_node 0
    if ip link show gs0 >/dev/null 2>&1 && ! alive kubelet; then
        # A crashed run of this checkout (or another checkout's node) holds the host-wide pieces.
        log "bridge gs0 exists but this checkout's kubelet is not running: cleaning up first"
        cmd_down
    fi
    ensure_packages
    bash "$HERE/cluster.sh" build-node
    local t0=$SECONDS i
    for ((i = 0; i < NODES; i++)); do
        select_node "$i"
        start_node
    done
    select_node 0
    if ! alive kube-proxy; then
        start_bg kube-proxy kube-proxy --kubeconfig "$KUBECONFIG_PATH" --hostname-override "$NODE" \
            --proxy-mode iptables --cluster-cidr "$CLUSTER_CIDR" --conntrack-max-per-core 0 \
            --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256
    fi
    for ((i = 0; i < NODES; i++)); do
        select_node "$i"
        wait_for "node $NODE Ready" 120 node_ready
        wait_for "nvidia.com/gpu on $NODE" 30 node_has_gpus
        log "node $NODE Ready ($(kc get node "$NODE" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}'), $GPUS nvidia.com/gpu, product $GPU_PRODUCT)"
    done
    select_node 0
    wait_for kube-proxy 60 curl -fsS http://127.0.0.1:10256/healthz
    log "$NODES real node(s) up in $((SECONDS - t0)) s"
}

stop_pid() {  # name: SIGTERM, wait up to 20 s, then SIGKILL
    local name="$1" pid
    [[ -f "$S/$name.pid" ]] || return 0
    pid="$(cat "$S/$name.pid")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$S/$name.pid"
}

mounts_under() {
    # Mount points under the folder $1 (with its trailing slash), as the kernel lists them.
    awk -v p="$1" 'index($2, p) == 1 {print $2}' /proc/mounts
}

stop_node() {  # the selected node
    # With the kubelet alive, deleting the pods tears their sandboxes down through CNI (veths, IPAM, NAT).
    if alive kubelet && [[ -f "$KUBECONFIG_PATH" ]] && kc get node "$NODE" >/dev/null 2>&1; then
        kc delete pods -A --field-selector "spec.nodeName=$NODE" --grace-period 1 --wait=false >/dev/null 2>&1 || true
        local deadline=$((SECONDS + 60))
        while ((SECONDS < deadline)) && [[ -n "$(ctr_ tasks ls -q 2>/dev/null)" ]]; do sleep 1; done
    fi
    stop_pid kubelet
    # Whatever still runs (pods the kubelet had no time to stop): kill the tasks, then the shims exit.
    if alive containerd; then
        local t
        for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
        for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
    fi
    stop_pid containerd
    # Volume, rootfs and netns mounts under the state folder, deepest first.
    mounts_under "$S/" | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    # Empty pod cgroups, leaves first (a cgroup with processes left stays and is reported).
    local d
    for d in $(cgroup_dirs); do
        [[ -d "$d" ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
        [[ ! -d "$d" ]] || log "cgroup $d still has processes"
    done
    if [[ -f "$KUBECONFIG_PATH" ]]; then
        kc delete node "$NODE" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    fi
    rm -rf "$S/cni/ipam" "$S/kubelet/root/pods" "$S/containerd/state"
    log "node $NODE stopped"
}

cmd_down() {
    local i
    select_node 0
    stop_pid kube-proxy
    if [[ -x "$BIN/kube-proxy" ]]; then
        "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || log "kube-proxy --cleanup reported errors"
    fi
    for i in $(node_dirs); do
        select_node "$i"
        stop_node
    done
    # Bridges of a node whose state folder is gone (e.g. deleted by hand).
    for ((i = 0; i < 8; i++)); do ip link del "gs$i" 2>/dev/null || true; done
    remove_kubelet_chains
}

cmd_purge() {
    # Each node's content store and snapshots hold every imported image twice (blobs and unpacked), so a
    # checkout that ran the real-node tier keeps gigabytes it can re-import from the image cache in 90 s.
    cmd_down
    local i m
    for i in $(node_dirs); do
        select_node "$i"
        # rm -rf would follow a bind mount left behind (a pod's hostPath) into the host: refuse instead.
        m="$(mounts_under "$S/" | head -1)"
        [[ -z "$m" ]] || die "not purging $NODE: $m is still mounted"
        rm -rf --one-file-system "$S/containerd" "$S/kubelet/root" "$S/runc" "$S/pod-logs"
        log "node $NODE purged ($(du -sh "$S" | cut -f1) left: logs and configs)"
    done
}

remove_kubelet_chains() {
    # The kubelet's own iptables chains (kube-proxy --cleanup leaves them): KUBE-FIREWALL drops
    # non-local traffic to 127.0.0.0/8; the canary and hint chains are empty markers.
    local t
    while iptables -t filter -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    while iptables -t filter -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    iptables -t filter -F KUBE-FIREWALL 2>/dev/null || true
    iptables -t filter -X KUBE-FIREWALL 2>/dev/null || true
    for t in filter nat mangle; do
        iptables -t "$t" -F KUBE-KUBELET-CANARY 2>/dev/null || true
        iptables -t "$t" -X KUBE-KUBELET-CANARY 2>/dev/null || true
    done
    iptables -t mangle -X KUBE-IPTABLES-HINT 2>/dev/null || true
}

cmd_env() {  # facts for the tests (tests/realnode/conftest.py)
    local names=() ips=() i
    for ((i = 0; i < NODES; i++)); do
        select_node "$i"
        names+=("$NODE")
        ips+=("$NODE_IP")
    done
    echo "NODES=$(IFS=,; echo "${names[*]}") NODE_IPS=$(IFS=,; echo "${ips[*]}") GPU_PRODUCT=$GPU_PRODUCT GPUS=$GPUS BASE_IMAGE=$BASE_IMAGE"
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
purge) cmd_purge ;;
import) shift; cmd_import "$@" ;;
env) cmd_env ;;
*) echo "usage: $0 up|down|purge|import ARCHIVE...|env" >&2; exit 2 ;;
esac
