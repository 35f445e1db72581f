#!/usr/bin/env bash
# The main job, end to end on this machine: build/start the local control plane (simulated GPU nodes),
# install the CRD as users do (kubectl apply -f crds/), run the operator, apply the example
# ModelService and wait until it is Ready. Leaves everything running; `make cluster-down` stops it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
STATE="$REPO/.harness"
step() { printf '\n==> %s\n' "$*"; }

t0=$SECONDS
step "Python environment"
VENV="$(bash tests/harness/venv.sh)"
step "Local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok GPU nodes)"
eval "$(bash tests/harness/cluster.sh up)"
kubectl get nodes -L nvidia.com/gpu.product

step "Install the CRD: kubectl apply -f crds/"
kubectl apply -f crds/
kubectl wait --for=condition=Established crd/modelservices.greenserve.io --timeout=60s

step "Start the operator (logs: .harness/operator.log)"
if [[ -f "$STATE/operator.pid" ]] && kill -0 "$(cat "$STATE/operator.pid")" 2>/dev/null; then
    kill "$(cat "$STATE/operator.pid")" || true
fi
nohup "$VENV/bin/python" -m greenserve run --standalone >"$STATE/operator.log" 2>&1 &
echo $! >"$STATE/operator.pid"

step "Apply examples/resnet.yaml and wait for Ready"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f -
t_apply=$SECONDS
kubectl apply -f examples/model-store.yaml
kubectl apply -n demo -f examples/resnet.yaml
kubectl wait -n demo --for=condition=Ready msvc/resnet --timeout=180s
echo "ModelService Ready $((SECONDS - t_apply)) s after kubectl apply"
kubectl get -n demo msvc,deploy,svc,pdb,pods -o wide
echo
echo "Demo finished in $((SECONDS - t0)) s. Explore with: $(bash tests/harness/cluster.sh env)"
echo "Stop everything with: make cluster-down"
