#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment outside the clone, keyed by the Python version and
# the dependency lists in pyproject.toml, and installs greenserve editable into it with its dev extras.
# Prints the venv path on stdout.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"
CACHE="${GREENSERVE_CACHE:-$HOME/.cache/greenserve}"
KEY="$("$PY" - "$REPO/pyproject.toml" <<'PYEOF'
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = {"d": project["dependencies"], "o": project["optional-dependencies"], "py": sys.version}
print(hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:16])
PYEOF
)"
VENV="$CACHE/venv/$KEY"
if [[ ! -f "$VENV/.complete" ]]; then
    echo "[venv] creating $VENV (cold: downloads TensorFlow, a few minutes)" >&2
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >&2
    "$VENV/bin/pip" install --progress-bar off -e "$REPO[dev]" >&2
    touch "$VENV/.complete"
else
    # Re-point the editable install at this clone (CI clones to a new path each run); no downloads.
    "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$REPO" >&2 2>/dev/null ||
        "$VENV/bin/pip" install -q --no-deps -e "$REPO" >&2
fi
echo "$VENV"
