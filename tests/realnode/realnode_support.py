"""Helpers of the real-node tier (tests/realnode)."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from support.kube import Kubectl
from support.paths import REPO

T = TypeVar("T")


@dataclass(frozen=True)
class RealNodes:
    """What tests/harness/real_node.sh started (its `env` command)."""

    names: list[str]
    ips: list[str]
    gpu_product: str
    gpus: int  # nvidia.com/gpu per node
    base_image: str  # Debian minbase + busybox, in every node's containerd


def node_facts() -> RealNodes:
    out = subprocess.run(
        ["bash", str(REPO / "tests/harness/real_node.sh"), "env"], check=True, capture_output=True, text=True
    ).stdout
    env = dict(kv.split("=", 1) for kv in out.split())
    return RealNodes(
        env["NODES"].split(","),
        env["NODE_IPS"].split(","),
        env["GPU_PRODUCT"],
        int(env["GPUS"]),
        env["BASE_IMAGE"],
    )


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not after {timeout:.0f} s (last: {last!r})")


def get_json(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    """`kubectl get ARGS -o json`, parsed."""
    out: dict[str, Any] = json.loads(kubectl.run("get", *args, "-o", "json").stdout)
    return out


def model_store(kubectl: Kubectl, ns: str, root: Path, names: list[str]) -> None:
    """Real SavedModels (tests/unit/agent/make_savedmodel.py: y = 2x + 1), one directory per name under
    `root`, on the PVC `models` of `ns`, bound to a hostPath volume: every real node is this machine, so
    the path exists wherever the pod lands."""
    root.chmod(0o755)
    first = root / names[0]
    make = [sys.executable, str(REPO / "tests/unit/agent/make_savedmodel.py"), str(first)]
    subprocess.run(make, check=True, timeout=300)
    for name in names[1:]:
        shutil.copytree(first, root / name)
    for p in [root, *root.rglob("*")]:  # readable by the serving pods' non-root user
        p.chmod(0o755 if p.is_dir() else 0o644)
    pv = f"{ns}-models"
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(root), "type": "Directory"},
                "claimRef": {"namespace": ns, "name": "models"},
            },
        }
    )
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models", "namespace": ns},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
    )


def predict(url: str, xs: list[float], timeout: float = 10) -> list[float]:
    body = json.dumps({"instances": [[x] for x in xs]}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out = json.loads(resp.read())
    return [float(p[0]) for p in out["predictions"]]


def predicts_correctly(url: str) -> bool:
    """The model store's y = 2x + 1 answers at `url`; False on any connection failure."""
    try:
        return predict(url, [1.0, 2.5]) == [3.0, 6.0]
    except OSError:
        return False


def restricted_namespace(kubectl: Kubectl, prefix: str) -> Iterator[str]:
    """A fresh namespace that enforces Pod Security "restricted"; deleted afterwards."""
    name = f"{prefix}-{secrets.token_hex(4)}"
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@dataclass
class Outcome:
    at: float  # monotonic time the request was sent
    ok: bool
    error: str = ""


class Load:
    """A bounded open-loop client: `rate` requests per second to `call`, each in its own worker thread (at
    most `workers` in flight), every outcome recorded with its send time. Change `rate` while it runs."""

    def __init__(
        self, call: Callable[[], bool], rate: float, workers: int = 32, timeout_s: float = 30
    ) -> None:
        self.call = call
        self.rate = rate
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def _one(self, at: float) -> None:
        try:
            ok, err = self.call(), ""
        except Exception as e:  # any failure of the request is an outcome, not a crash of the load
            ok, err = False, f"{type(e).__name__}: {e}"
        with self._lock:
            self.outcomes.append(Outcome(at, ok, err))

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_at:
                self._pool.submit(self._one, now)
                next_at += 1.0 / self.rate if self.rate > 0 else 0.5
                if next_at < now - 1:  # fell behind by more than a second: do not burst to catch up
                    next_at = now
            else:
                time.sleep(min(0.05, next_at - now))

    def between(self, start: float, end: float) -> tuple[int, list[Outcome]]:
        """Requests sent in [start, end): how many, and the failed ones."""
        with self._lock:
            window = [o for o in self.outcomes if start <= o.at < end]
        return len(window), [o for o in window if not o.ok]
