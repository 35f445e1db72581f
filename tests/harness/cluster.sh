#!/usr/bin/env bash
# Local control plane for greenserve: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
# kwok (simulated GPU nodes), all built from Go modules and bound to 127.0.0.1.
#
#   tests/harness/cluster.sh build   build (or reuse) the pinned binaries in the cache
#   tests/harness/cluster.sh up      build if needed, start the cluster, create the GPU nodes
#                                    (Service IP range 10.96.0.0/16: 65,534 Services; a supervisor restarts
#                                    kube-controller-manager and kube-scheduler when they exit)
#   tests/harness/cluster.sh down    stop the cluster
#   tests/harness/cluster.sh env     print `export KUBECONFIG=...` for the running cluster
#
# Binaries are cached outside the clone in $GREENSERVE_CACHE (default ~/.cache/greenserve), keyed by
# the contents of versions.env, so a warm run only starts processes.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

CACHE="${GREENSERVE_CACHE:-$HOME/.cache/greenserve}"
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
BIN="$CACHE/harness/$KEY/bin"
WORK="$CACHE/harness/$KEY/work"
CLUSTER="${GREENSERVE_CLUSTER:-greenserve}"
STATE="${GREENSERVE_STATE:-$REPO/.harness}"
KUBECONFIG_PATH="$STATE/kubeconfig"
GPU_NODES="${GREENSERVE_GPU_NODES:-4}"
GPUS_PER_NODE="${GREENSERVE_GPUS_PER_NODE:-8}"
GPU_PRODUCT="${GREENSERVE_GPU_PRODUCT:-NVIDIA-H100-80GB-HBM3}"
# kube-apiserver's default range, 10.0.0.0/24, holds 254 Services: too few to test 1,000 ModelServices.
SERVICE_CIDR="${GREENSERVE_SERVICE_CIDR:-10.96.0.0/16}"
# The kubernetes Service takes the range's first address (10.96.0.1): in the API server's certificate.
_svc_net="${SERVICE_CIDR%/*}"
KUBERNETES_SERVICE_IP="${_svc_net%.*}.$((${_svc_net##*.} + 1))"
# Components that exit on their own once kube-apiserver has been away for a while (leader election lost).
SUPERVISED="kube-controller-manager kube-scheduler"

export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}"
# The checksum database has no entry for this staging module at the pinned version (404 on lookup);
# the module itself comes from the proxy like every other one.
export GONOSUMDB="${GONOSUMDB:+$GONOSUMDB,}k8s.io/externaljwt"

log() { printf '[harness %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# The staging modules that k8s.io/kubernetes requires at v0.0.0; each is replaced by its published v0.Y.Z.
STAGING="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider cluster-bootstrap
code-generator component-base component-helpers controller-manager cri-api cri-client csi-translation-lib
dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission sample-apiserver sample-cli-plugin
sample-controller"

# Runs a build step in the background and prints a progress line every 30 s, so a cold build is not silent.
with_progress() {
    local what="$1"; shift
    local start=$SECONDS
    "$@" &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 5
        if (( (SECONDS - start) % 30 < 5 )) && kill -0 "$pid" 2>/dev/null; then
            log "  still building $what ($((SECONDS - start)) s)"
        fi
    done
    wait "$pid"
    log "built $what in $((SECONDS - start)) s"
}

build_k8s() {  # the k8s.io/kubernetes/cmd/... commands to build
    local dir="$WORK/k8s" minor="${K8S_VERSION#v1.}"
    minor="${minor%%.*}"
    local staging_v="v0.${K8S_VERSION#v1.}"
    mkdir -p "$dir"
    cp "$HERE/go/k8s/tools.go" "$dir/"
    {
        echo "module local/greenserve/k8sbin"
        echo
        echo "go 1.24.0"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        echo "replace ("
        for m in $STAGING; do echo "	k8s.io/$m => k8s.io/$m $staging_v"; done
        echo ")"
    } >"$dir/go.mod"
    (cd "$dir" && go mod tidy >/dev/null)
    local ldf="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor
      -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION
      -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
    local cmds=() c
    for c in "$@"; do cmds+=("k8s.io/kubernetes/cmd/$c"); done
    (cd "$dir" && go build -trimpath -ldflags "$ldf" -o "$BIN/" "${cmds[@]}")
}

build_etcd() {
    local dir="$WORK/etcd"
    mkdir -p "$dir"
    cp "$HERE/go/etcd/tools.go" "$dir/"
    printf 'module local/greenserve/etcdbin\n\ngo 1.25.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$dir/go.mod"
    (cd "$dir" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
}

build_kwok() {
    GOBIN="$BIN" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
        "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
}

build_karpenter() {
    # Karpenter's kwok cloud provider: a real node autoscaler whose nodes are kwok nodes. Its main package
    # is named kwok too, hence a wrapper module and an explicit output name.
    local dir="$WORK/karpenter"
    mkdir -p "$dir"
    printf '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/karpenter/kwok"\n' >"$dir/tools.go"
    printf 'module local/greenserve/karpenterbin\n\ngo 1.26.6\n\nrequire sigs.k8s.io/karpenter %s\n' \
        "$KARPENTER_VERSION" >"$dir/go.mod"
    (cd "$dir" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w" -o "$BIN/karpenter-kwok" sigs.k8s.io/karpenter/kwok)
}

build_helm() {
    GOBIN="$BIN" go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

cmd_build() {
    mkdir -p "$BIN" "$WORK"
    local t0=$SECONDS
    [[ -x "$BIN/etcd" ]] || { log "building etcd $ETCD_VERSION (cold)"; with_progress etcd build_etcd; }
    [[ -x "$BIN/kwokctl" && -x "$BIN/kwok" ]] || { log "building kwok $KWOK_VERSION (cold)"; with_progress kwok build_kwok; }
    [[ -x "$BIN/helm" ]] || { log "building helm $HELM_VERSION (cold)"; with_progress helm build_helm; }
    if [[ ! -x "$BIN/kube-apiserver" || ! -x "$BIN/kube-scheduler" || ! -x "$BIN/kube-controller-manager" || ! -x "$BIN/kubectl" ]]; then
        log "building Kubernetes $K8S_VERSION control plane (cold; several minutes on 2 cores)"
        with_progress kubernetes build_k8s kube-apiserver kube-controller-manager kube-scheduler kubectl
    fi
    [[ -x "$BIN/karpenter-kwok" ]] || { log "building Karpenter $KARPENTER_VERSION kwok provider (cold)"; with_progress karpenter build_karpenter; }
    log "binaries ready in $BIN ($((SECONDS - t0)) s)"
}

cmd_build_node() {
    # The real node's kubelet and kube-proxy (tests/harness/real_node.sh), from the same module and
    # ldflags as the control plane; only the tiers that start a real node need them.
    cmd_build
    if [[ ! -x "$BIN/kubelet" || ! -x "$BIN/kube-proxy" ]]; then
        log "building kubelet and kube-proxy $K8S_VERSION (cold; a few minutes on 2 cores)"
        with_progress "kubelet and kube-proxy" build_k8s kubelet kube-proxy
    fi
}

gpu_node_manifest() {
    local i="$1"
    cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: gpu-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: gpu-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node.kubernetes.io/instance-type: gpu-${GPUS_PER_NODE}x
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.product: $GPU_PRODUCT
    nvidia.com/gpu.count: "$GPUS_PER_NODE"
    type: kwok
spec:
  providerID: kwok://gpu-node-$i
  taints:
  - {key: nvidia.com/gpu, value: present, effect: NoSchedule}
status:
  allocatable: {cpu: "64", memory: 512Gi, pods: "110", nvidia.com/gpu: "$GPUS_PER_NODE"}
  capacity: {cpu: "64", memory: 512Gi, pods: "110", nvidia.com/gpu: "$GPUS_PER_NODE"}
EOF
}

cpu_node_manifest() {
    # One untainted node without GPUs: GPU replicas must never land here.
    cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: cpu-node-0
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: cpu-node-0, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
spec:
  providerID: kwok://cpu-node-0
status:
  allocatable: {cpu: "32", memory: 128Gi, pods: "110"}
  capacity: {cpu: "32", memory: 128Gi, pods: "110"}
EOF
}

cmd_up() {
    cmd_build
    mkdir -p "$STATE"
    local config="$STATE/kwok.yaml"
    cat >"$config" <<EOF
kind: KwokctlConfiguration
apiVersion: config.kwok.x-k8s.io/v1alpha1
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeBinaryPrefix: $BIN
  kwokControllerBinary: $BIN/kwok
  etcdBinary: $BIN/etcd
  kubectlBinary: $BIN/kubectl
  kubeSchedulerConfig: $HERE/scheduler-mostallocated.yaml
  # The kubernetes Service IP and the real node's bridge address (tests/harness/real_node.sh): pods on
  # a real node reach the API server through the Service.
  kubeApiserverCertSANs: [$KUBERNETES_SERVICE_IP, 10.244.7.1]
componentsPatches:
# The kubernetes Service's endpoint is the advertise address: the real node's bridge address, where its
# pods reach the host. Listening on all addresses is what makes that address answer; this machine's
# network is closed, and every request needs a client certificate or token.
- name: kube-apiserver
  extraArgs:
  - {key: bind-address, value: 0.0.0.0, override: true}
  - {key: advertise-address, value: 10.244.7.1}
  # Reach kubelets (logs, exec) by node IP: a real node's name resolves nowhere.
  - {key: kubelet-preferred-address-types, value: "InternalIP,Hostname"}
  - {key: service-cluster-ip-range, value: $SERVICE_CIDR}
# kwok fakes only the nodes annotated kwok.x-k8s.io/node=fake (ours and Karpenter's kwok nodes), so a real
# kubelet node beside them keeps its own lease and pod status. kwokctl passes --manage-all-nodes=true.
- name: kwok-controller
  extraArgs:
  - {key: manage-all-nodes, value: "false", override: true}
  - {key: manage-nodes-with-annotation-selector, value: kwok.x-k8s.io/node=fake}
- name: kube-controller-manager
  extraArgs:
  - {key: service-cluster-ip-range, value: $SERVICE_CIDR}
EOF
    if "$BIN/kwokctl" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
        log "cluster $CLUSTER already exists; recreating"
        "$BIN/kwokctl" delete cluster --name "$CLUSTER" >&2 || true
    fi
    log "starting control plane $K8S_VERSION"
    local t0=$SECONDS
    # GREENSERVE_AUDIT=1: kube-apiserver writes an audit log (tests/harness/audit-policy.yaml) that
    # tests/harness/api_requests.py counts the operator's requests from.
    local audit=()
    [[ "${GREENSERVE_AUDIT:-0}" == 1 ]] && audit=(--kube-audit-policy "$HERE/audit-policy.yaml")
    KWOK_KUBE_VERSION="$K8S_VERSION" "$BIN/kwokctl" create cluster --name "$CLUSTER" -c "$config" \
        --kubeconfig "$KUBECONFIG_PATH" --wait 180s "${audit[@]}" >&2
    log "control plane up in $((SECONDS - t0)) s; kubeconfig $KUBECONFIG_PATH"
    { cpu_node_manifest; echo "---"; for ((i = 0; i < GPU_NODES; i++)); do gpu_node_manifest "$i"; echo "---"; done; } |
        "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" apply -f - >&2
    "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" wait --for=condition=Ready node --all --timeout=120s >&2
    log "$GPU_NODES GPU nodes x $GPUS_PER_NODE nvidia.com/gpu ($GPU_PRODUCT) and 1 CPU node ready"
    supervise_start
    echo "export KUBECONFIG=$KUBECONFIG_PATH PATH=$BIN:\$PATH"
}

# kwokctl's binary runtime starts each component once and keeps its pid in <cluster>/pids/<name>.pid (and
# removes the file when it stops one on purpose). The supervisor records the command line of each
# supervised component at start and, while the pid file names a process that is gone, starts it again
# with the same arguments, working directory and log, and writes the new pid where kwokctl looks for it.
kwok_cluster_dir() { echo "${KWOK_WORKDIR:-$HOME/.kwok}/clusters/$CLUSTER"; }

supervise_start() {
    supervise_stop
    local dir c pid
    dir="$(kwok_cluster_dir)"
    mkdir -p "$STATE/supervisor"
    for c in $SUPERVISED; do
        pid="$(cat "$dir/pids/$c.pid")"
        cp "/proc/$pid/cmdline" "$STATE/supervisor/$c.cmdline"
        readlink "/proc/$pid/cwd" >"$STATE/supervisor/$c.cwd"
    done
    nohup bash "$HERE/cluster.sh" supervise >>"$STATE/supervisor/supervisor.log" 2>&1 </dev/null &
    echo $! >"$STATE/supervisor.pid"
    log "supervisor running for $SUPERVISED (log $STATE/supervisor/supervisor.log)"
}

supervise_stop() {
    if [[ -f "$STATE/supervisor.pid" ]]; then
        kill "$(cat "$STATE/supervisor.pid")" 2>/dev/null || true
        rm -f "$STATE/supervisor.pid"
    fi
}

cmd_supervise() {
    local dir c pid
    dir="$(kwok_cluster_dir)"
    while [[ -d "$dir" ]]; do
        for c in $SUPERVISED; do
            [[ -f "$dir/pids/$c.pid" && -f "$STATE/supervisor/$c.cmdline" ]] || continue
            pid="$(cat "$dir/pids/$c.pid" 2>/dev/null || true)"
            [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && continue
            local -a argv=()
            mapfile -d '' -t argv <"$STATE/supervisor/$c.cmdline"
            (cd "$(cat "$STATE/supervisor/$c.cwd")" && exec setsid "${argv[@]}" >>"$dir/logs/$c.log" 2>&1 </dev/null) &
            printf %s "$!" >"$dir/pids/$c.pid"  # no newline: kwokctl parses it with Atoi
            log "$c (pid ${pid:-?}) had exited: restarted as pid $!"
        done
        sleep 2
    done
}

cmd_down() {
    supervise_stop
    if [[ -d "$STATE/node" ]]; then bash "$HERE/real_node.sh" down; fi
    cmd_karpenter_down quiet
    # The demo's background processes (tests/harness/demo_replay.py).
    for p in operator twin prometheus; do
        if [[ -f "$STATE/$p.pid" ]]; then
            kill "$(cat "$STATE/$p.pid")" 2>/dev/null || true
            rm -f "$STATE/$p.pid"
        fi
    done
    if [[ -x "$BIN/kwokctl" ]]; then
        "$BIN/kwokctl" delete cluster --name "$CLUSTER" >&2 || true
    fi
    rm -f "$KUBECONFIG_PATH"
    log "cluster $CLUSTER stopped"
}

cmd_karpenter_up() {
    # A real node autoscaler for the end-to-end tests: Karpenter with its kwok cloud provider, out of cluster.
    local mod
    mod="$(go env GOMODCACHE)/sigs.k8s.io/karpenter@$KARPENTER_VERSION"
    [[ -d "$mod" ]] || { log "Karpenter module missing in the module cache; run build"; exit 1; }
    "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" apply --server-side -f "$mod/kwok/charts/crds" \
        -f "$mod/kwok/apis/crds/karpenter.kwok.sh_kwoknodeclasses.yaml" >&2
    "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" wait --for=condition=Established crd/nodepools.karpenter.sh \
        crd/kwoknodeclasses.karpenter.kwok.sh --timeout=60s >&2
    "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" apply -f "$HERE/karpenter/nodepool.yaml" >&2
    cmd_karpenter_down quiet
    KUBECONFIG="$KUBECONFIG_PATH" DISABLE_LEADER_ELECTION=true SYSTEM_NAMESPACE=kube-system \
        INSTANCE_TYPES_FILE_PATH="$HERE/karpenter/instance_types.json" METRICS_PORT=18080 HEALTH_PROBE_PORT=18081 \
        BATCH_IDLE_DURATION=1s BATCH_MAX_DURATION=3s LOG_LEVEL=info \
        nohup "$BIN/karpenter-kwok" >"$STATE/karpenter.log" 2>&1 &
    echo $! >"$STATE/karpenter.pid"
    log "Karpenter $KARPENTER_VERSION (kwok provider) running, log $STATE/karpenter.log"
}

cmd_karpenter_down() {
    if [[ -f "$STATE/karpenter.pid" ]]; then
        kill "$(cat "$STATE/karpenter.pid")" 2>/dev/null || true
        rm -f "$STATE/karpenter.pid"
        [[ "${1:-}" == quiet ]] || log "Karpenter stopped"
    fi
}

case "${1:-}" in
build) cmd_build ;;
build-node) cmd_build_node ;;
up) cmd_up ;;
down) cmd_down ;;
karpenter-up) cmd_karpenter_up ;;
karpenter-down) cmd_karpenter_down ;;
env) echo "export KUBECONFIG=$KUBECONFIG_PATH PATH=$BIN:\$PATH" ;;
supervise) cmd_supervise ;;
bin) echo "$BIN" ;;
*) echo "usage: $0 build|build-node|up|down|karpenter-up|karpenter-down|env|bin|supervise" >&2; exit 2 ;;
esac
