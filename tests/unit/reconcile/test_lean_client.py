"""The operator loads the Kubernetes client's configuration loaders without its 1,600 generated modules
(cluster/lean_client.py), and everything still resolves: kopf's check, the kubeconfig loader with a token,
and any API or model class on first use. Run in a fresh interpreter: this one has the client imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]

PROBE = """
import asyncio, json, sys
from greenserve.cluster import lean_client
installed = lean_client.install()
import kopf
import greenserve.handlers
from greenserve.cluster.credentials import KubeAuth
loaded = len([m for m in sys.modules if m.startswith("kubernetes_asyncio")])
creds = asyncio.run(KubeAuth().credentials())
from kubernetes_asyncio.client import ApiException, Configuration, CoreV1Api, V1Pod
import kubernetes_asyncio.client.models as models
pod = V1Pod(metadata=models.V1ObjectMeta(name="p"))
print(json.dumps({"installed": installed, "loaded": loaded, "server": creds.server, "token": creds.token,
                  "pod": pod.metadata.name, "api": CoreV1Api.__name__, "err": ApiException.__name__}))
"""


def test_the_operator_imports_the_client_lazily_and_loads_a_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t0k3n"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(REPO / "operator")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["installed"] is True
    assert got["loaded"] < 50  # of about 1,700 when the package's __init__ runs
    assert (got["server"], got["token"]) == ("https://10.0.0.1:6443", "t0k3n")
    assert (got["pod"], got["api"], got["err"]) == ("p", "CoreV1Api", "ApiException")
