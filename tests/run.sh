#!/usr/bin/env bash
# The test command (README, `make test`, .ci/run): lint, type-check, then every test tier that runs
# without a GPU — unit tests, and integration tests against a local control plane started here.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
t0=$SECONDS
VENV="$(bash tests/harness/venv.sh)"
export PATH="$VENV/bin:$PATH"
echo "[test] venv ready in $((SECONDS - t0)) s: $VENV"

if [[ -f tests/harness/prometheus.sh ]]; then bash tests/harness/prometheus.sh; fi

echo "[test] ruff"; ruff check .
echo "[test] mypy"; mypy
echo "[test] import layers"; PYTHONPATH="$REPO/operator:$REPO/serving-image" lint-imports
echo "[test] CRD matches the API types"; python -m greenserve.api.crdgen --check

t1=$SECONDS
bash tests/harness/cluster.sh up >/dev/null
trap 'bash tests/harness/cluster.sh down' EXIT
echo "[test] control plane up in $((SECONDS - t1)) s"
export GREENSERVE_REQUIRE_CLUSTER=1

set +e
python -m pytest tests -m "not gpu" "$@"
rc=$?
set -e
# pytest exits 5 when nothing was collected; that is a broken selection here, not a pass.
exit $rc
