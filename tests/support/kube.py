"""Helpers for tests against the local control plane: kubectl, polling, and the operator process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

from greenserve import contract as k
from greenserve.api import constants as c

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def kwok_gpu_node(name: str, product: str, gpus: int) -> dict[str, Any]:
    """A kwok node (the harness's kwok takes only nodes annotated for it) with `gpus` GPUs of `product`,
    tainted as the GPU operator taints GPU nodes."""
    resources = {"cpu": "64", "memory": "512Gi", "pods": "110", c.GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "type": "kwok", c.GPU_PRODUCT_LABEL: product},
        },
        "spec": {"taints": [{"key": c.GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]},
        "status": {"allocatable": resources, "capacity": dict(resources)},
    }


def harness_bin() -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "tests/harness/cluster.sh"), "bin"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


class Kubectl:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.binary = str(harness_bin() / "kubectl")

    def wait_established(self, crd: str, timeout: float = 60.0) -> None:
        """Wait until a CRD is Established. `kubectl wait --for=condition=Established` fails at once, not
        waits, while a just-created CRD has no status.conditions yet (an "accessor error")."""
        deadline = time.monotonic() + timeout
        query = '{.status.conditions[?(@.type=="Established")].status}'
        last = ""
        while time.monotonic() < deadline:
            got = self.run("get", "crd", crd, "-o", f"jsonpath={query}", check=False)
            last = got.stdout.strip() or got.stderr.strip()
            if got.returncode == 0 and last == "True":
                return
            time.sleep(0.5)
        raise AssertionError(f"CRD {crd} not Established after {timeout:.0f}s: {last}")

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def apply(self, obj: dict[str, Any] | str, check: bool = True) -> subprocess.CompletedProcess[str]:
        text = obj if isinstance(obj, str) else yaml.safe_dump(obj)
        return self.run("apply", "-f", "-", input=text, check=check)


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    timeout: float = 60.0,
    interval: float = 0.5,
    what: str = "condition",
) -> T:
    """Poll `probe` until it returns something truthy; fail with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class OperatorProcess:
    """The real operator (`python -m greenserve run`) as a child process, restartable and killable."""

    def __init__(
        self,
        kubeconfig: Path,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        verbose: bool = True,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.verbose = verbose  # kopf's debug log costs CPU per event: the scale benchmark turns it off
        self.log_dir = log_dir
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.metrics_port = _free_port()

    def start(self) -> None:
        self.starts += 1
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "GREENSERVE_RECONCILE_INTERVAL": "3",
            "GREENSERVE_METRICS_PORT": str(self.metrics_port),
            "GREENSERVE_CONSOLIDATION": "false",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "greenserve", "run", "--standalone"] + (["--verbose"] * self.verbose),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crashed or evicted operator pod would be."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def passes(self, loop: str) -> float:
        """Completed passes of one of the operator's loops (`resync` or `consolidation`), from its own
        metrics endpoint; 0 before the endpoint is up."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == k.OP_PASSES.name and sample.labels.get("loop") == loop:
                    return float(sample.value)
        return 0.0

    async def wait_passes(self, loop: str, count: int, timeout: float = 60.0) -> None:
        """Wait until `count` more passes of `loop` have completed: for negative assertions ("nothing
        changes"), which need the operator to have looked again, not a guessed sleep."""
        start = self.passes(loop)

        async def done() -> bool:
            return self.passes(loop) >= start + count

        await eventually(done, timeout, interval=0.2, what=f"{count} more {loop} passes")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refusals(logs: str) -> list[str]:
    """Log lines where the API server refused the operator by RBAC or by the chart's admission policy. Not
    kopf's DEBUG lines (they quote whole objects, whose annotations may quote an earlier failure), nor the
    403 of a write into a namespace that is being deleted (another test's, still terminating). Every 403
    the operator can log says so in words (greenserve's ApiError "403 Forbidden: ...", kopf's
    APIForbiddenError, aiohttp's "403, message='Forbidden'"); a bare "403" would match log timestamps."""
    return [
        line
        for line in logs.splitlines()
        if ("Forbidden" in line or "forbidden" in line or "ValidatingAdmissionPolicy" in line)
        and "[DEBUG" not in line
        and "because it is being terminated" not in line
    ]


def rbac_denials(logs: str) -> list[str]:
    """Log lines where the API server refused the operator for lack of a permission (RBAC), as opposed to
    other 403s such as writing into a namespace that is being deleted."""
    return [line for line in logs.splitlines() if "is forbidden: User" in line and "cannot" in line]
