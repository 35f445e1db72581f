"""A metrics gap never scales down (issue 17), end to end: the twin (SIMULATED per-pod metrics), Debian's
Prometheus scraping it and the operator reading Prometheus, on the static H100 kwok nodes.

The scrape target goes away for longer than scaleDownDelaySeconds, so the stabilisation window empties,
then comes back under the same load. The first rate windows after it hold only part of the data and
under-read the load; the operator must hold the count (`HoldAfterGap`) until a full window of fresh data
exists and the stabilisation window has been refilled, and never scale down on the way."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from e2e.test_closed_loop import (
    TWIN,
    dump_state,
    e2e_operator,
    msvc_manifest,
    progress,
    record,
    set_loads,
    start_prometheus,
    start_twin,
    stop_twin,
    twin_counters,
)
from greenserve.api import conditions as cond
from greenserve.cluster.client import DEPLOYMENTS, MODELSERVICES, KubeClient
from greenserve.policy import autoscaling as pa
from support.kube import Kubectl, eventually, rbac_denials

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

RATE = 180.0  # req/s: ceil(180 / 50) = 4 replicas at the target of 50 req/s per replica
REPLICAS = 4
DELAY_S = 20  # scaleDownDelaySeconds
WINDOW_S = 10  # the operator's GREENSERVE_METRICS_WINDOW in e2e_operator
GAP_S = 45  # the scrape target is away this long: more than DELAY_S, so the window empties


def restart_twin(kubeconfig: Path, tmp_path: Path, port: int, schedule: Path) -> subprocess.Popen[bytes]:
    """The twin again on the port Prometheus scrapes, with the same load schedule (counters from zero)."""
    log = open(tmp_path / "twin-2.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, str(TWIN), "--port", str(port), "--interval", "1", "--schedule-file", str(schedule)],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            twin_counters(port)
            return proc
        except OSError:
            assert proc.poll() is None, (tmp_path / "twin-2.log").read_text()
            assert time.monotonic() < deadline, "the twin did not start serving again"
            time.sleep(0.3)


async def test_a_metrics_gap_longer_than_the_delay_holds_the_count(
    kube: KubeClient,
    kubectl: Kubectl,
    namespace: str,
    kubeconfig: Path,
    operator_kubeconfig: Path,
    operator_env: dict[str, str],
    tmp_path: Path,
) -> None:
    proc, port, schedule = start_twin(kubeconfig, tmp_path)
    prom = start_prometheus(port, tmp_path)
    op = e2e_operator(operator_kubeconfig, operator_env, prom.url, False, tmp_path)
    key = f"{namespace}/svc"
    set_loads(schedule, {key: RATE})
    op.start()
    try:
        manifest = msvc_manifest("svc", namespace, False)
        manifest["spec"]["gpu"]["product"] = "NVIDIA-H100-80GB-HBM3"  # the static nodes: no node autoscaler
        manifest["spec"]["scaling"].update({"maxReplicas": 8, "scaleDownDelaySeconds": DELAY_S})
        kubectl.apply(manifest)

        async def steady() -> dict[str, Any] | None:
            st = (await kube.get(MODELSERVICES, "svc", namespace)).get("status", {})
            desired = st.get("desiredReplicas") or 0
            ok = desired >= REPLICAS and st.get("readyReplicas") == desired
            return st if ok and (st.get("requestsPerSecond") or 0) > 0.9 * RATE else None

        before = await eventually(
            steady, 240, interval=1, what=f">= {REPLICAS} ready replicas at {RATE} req/s"
        )
        held = int(before["desiredReplicas"])

        # The gap: the scrape target goes away; the operator sees stale metrics and holds.
        stop_twin(proc)
        gone = time.monotonic()
        desired_seen: list[int] = []
        reasons: set[str] = set()
        rates_after: list[float] = []

        async def watch(after_gap: bool) -> None:
            body = await kube.get(MODELSERVICES, "svc", namespace)
            st = body.get("status", {})
            dep = await kube.get(DEPLOYMENTS, "svc", namespace)
            desired_seen.extend([int(st.get("desiredReplicas") or 0), int(dep["spec"]["replicas"])])
            scaling = cond.get_condition(st.get("conditions"), cond.SCALING)
            if scaling:
                reasons.add(scaling["reason"])
            if after_gap and st.get("requestsPerSecond") is not None:
                rates_after.append(float(st["requestsPerSecond"]))
            await progress(kube, namespace, ("svc",), time.monotonic() - gone)

        while time.monotonic() - gone < GAP_S:
            await watch(after_gap=False)
            await asyncio.sleep(1)
        assert any(r.startswith("HoldMetrics") for r in reasons), reasons

        # Back under the same load. Hold through one metrics window plus the stabilisation delay after the
        # first fresh reading, and then some: the count never goes down, since the load never did.
        proc = restart_twin(kubeconfig, tmp_path, port, schedule)
        back = time.monotonic()
        while time.monotonic() - back < 2 * (WINDOW_S + DELAY_S) + 30:
            await watch(after_gap=True)
            await asyncio.sleep(1)
        result = {
            "replay": "metrics-gap",
            "gap_s": GAP_S,
            "desired_before": held,
            "min_desired": min(desired_seen),
            "reasons": sorted(reasons),
            "min_rate_after_gap": min(rates_after) if rates_after else None,
        }
        record(result)
        assert min(desired_seen) >= held, result
        assert pa.HOLD_AFTER_GAP in reasons, result
        assert rates_after, "metrics never came back after the gap"
        assert rbac_denials(op.logs()) == []
    except AssertionError:
        await dump_state(kube, namespace, ("svc",))
        raise
    finally:
        op.stop()
        prom.stop()
        stop_twin(proc)
        kubectl.run("delete", "msvc", "svc", "-n", namespace, "--wait=false", check=False)
