#!/usr/bin/env bash
# The main job, end to end on this machine: build/start the local control plane (simulated GPU nodes),
# install the chart's CRDs as users do, run the operator against a real Prometheus that scrapes the digital
# twin (SIMULATED GPU metrics), apply the example ModelService, replay a real request trace and end with a
# report (table + PNG) of energy, GPU-hours and SLO attainment against the HPA-like baseline.
# Leaves everything running; `make cluster-down` stops it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
step() { printf '\n==> %s\n' "$*"; }

t0=$SECONDS
step "Python environment"
VENV="$(bash tests/harness/venv.sh)"
step "Local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok GPU nodes)"
eval "$(bash tests/harness/cluster.sh up)"
kubectl get nodes -L nvidia.com/gpu.product

step "Install the chart's CRDs: kubectl apply --server-side -f charts/greenserve/crds/"
kubectl apply --server-side -f charts/greenserve/crds/
# `kubectl wait --for=condition=Established` fails at once while a new CRD has no conditions yet: poll.
for _ in $(seq 120); do
    established="$(kubectl get crd modelservices.greenserve.io \
        -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null || true)"
    [[ "$established" == True ]] && break
    sleep 0.5
done
[[ "$established" == True ]] || { echo "the ModelService CRD is not Established" >&2; exit 1; }

"$VENV/bin/python" tests/harness/demo_replay.py "$@"
echo
kubectl get -n demo msvc,deploy,pdb -o wide
echo
echo "Demo finished in $((SECONDS - t0)) s. Report and plots: .harness/demo/"
echo "Explore with: $(bash tests/harness/cluster.sh env)"
echo "Stop everything with: make cluster-down"
