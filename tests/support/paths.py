from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def harness_kubeconfig() -> Path | None:
    """The local control plane's kubeconfig: GREENSERVE_KUBECONFIG, else .harness/kubeconfig if present."""
    raw = os.environ.get("GREENSERVE_KUBECONFIG")
    path = Path(raw) if raw else REPO / ".harness" / "kubeconfig"
    return path if path.exists() else None
