#!/usr/bin/env bash
# `make images`: builds greenserve's operator image and the serving image's CPU test variant as OCI archives
# cached in ~/.cache/greenserve/images (keyed by their content; a warm build takes seconds), and prints their
# references and archive paths as shell assignments:
#
#   eval "$(bash tests/harness/images.sh)"
#   ctr -n k8s.io images import "$GREENSERVE_SERVING_ARCHIVE"      # or: podman load -i ...
#
# Installs what it needs on a fresh Debian machine (mmdebstrap). See tests/harness/images.py.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v mmdebstrap >/dev/null; then
    echo "[images] installing mmdebstrap (apt)" >&2
    SUDO=""; [[ $EUID -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mmdebstrap >&2
fi
# A Python 3.11 with pip (bookworm's python3 is 3.11: the wheels and bytecode fit the image): $PYTHON, else
# python3 when it is one, else the project's venv.
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if python3 -c 'import sys, pip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        PY=python3
    else
        PY="$(bash "$HERE/venv.sh")/bin/python"
    fi
fi
exec "$PY" "$HERE/images.py" "$@"
