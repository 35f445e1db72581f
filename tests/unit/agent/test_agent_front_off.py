"""The agent without its REST front (``--agent-front=off``): the model server answers REST itself, the agent
owns readiness on /ready, passes TF Serving's request metrics through and drains on TF Serving's counter."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from agent_proc import MODEL, AgentProcess, make_saved_model, start_agent
from prometheus_client.parser import text_string_to_metric_families

from greenserve import contract as k

PROPAGATION_S = 1.0
pytestmark = [pytest.mark.tensorflow, pytest.mark.slow, pytest.mark.timeout(300)]


def wait_ready(agent: AgentProcess, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            raise RuntimeError(f"agent exited with {agent.proc.returncode}:\n{agent.log()}")
        try:
            with urllib.request.urlopen(f"{agent.metrics}{k.AGENT_READY_PATH}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(agent.log())


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_saved_model(tmp_path_factory.mktemp("models"))


@pytest.fixture
def agent(base: Path, tmp_path: Path) -> Iterator[AgentProcess]:
    proc = start_agent(
        base,
        tmp_path / "agent.log",
        "--agent-front=off",
        "--agent-drain-quiet=0.5",
        "--agent-drain-timeout=30",
    )
    try:
        wait_ready(proc)
        yield proc
    finally:
        proc.stop()


def test_model_server_answers_rest_and_the_agent_exports_its_metrics(agent: AgentProcess) -> None:
    req = urllib.request.Request(
        f"{agent.rest}/v1/models/{MODEL}:predict",
        data=json.dumps({"instances": [[1.0], [2.0]]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    for _ in range(3):
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["predictions"] == [[3.0], [5.0]]
    # The local backend answered on the REST port itself: no agent process between.
    assert "no REST front" in agent.log()
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"{agent.metrics}/metrics", timeout=10) as r:
            families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        tfs = families.get(k.TFS_REQUEST_COUNT)
        counted = sum(s.value for s in tfs.samples) if tfs else 0
        if counted >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counted == 3  # TF Serving's own counter, passed through
    # The front's series are absent, not zero: the operator reads TF Serving's counter instead.
    assert k.REQUESTS.family not in families and k.AGENT_INFLIGHT.family not in families
    assert k.GPU_POWER.family in families and k.AGENT_READY.family in families


async def test_sigterm_under_load_loses_no_request(agent: AgentProcess) -> None:
    endpoint_removed = asyncio.Event()
    results: list[tuple[float, int | str]] = []
    body = {"instances": [[float(i)] for i in range(256)]}

    async def client(http: aiohttp.ClientSession) -> None:
        # Keeps sending on its pooled connections until the endpoint is removed, as kube-proxy would.
        while not endpoint_removed.is_set():
            try:
                async with http.post(f"{agent.rest}/v1/models/{MODEL}:predict", json=body) as r:
                    payload = await r.json()
                    ok = r.status == 200 and payload["predictions"][3] == [7.0]
                    results.append((time.monotonic(), 200 if ok else r.status))
            except aiohttp.ClientError as exc:
                results.append((time.monotonic(), type(exc).__name__))

    async def endpoints_controller(http: aiohttp.ClientSession) -> None:
        # The EndpointSlice controller, driven by the readiness probe (the agent's /ready here).
        while True:
            async with http.get(f"{agent.metrics}{k.AGENT_READY_PATH}") as r:
                if r.status != 200:
                    # The removal takes a while to reach every proxy: requests keep coming meanwhile.
                    await asyncio.sleep(PROPAGATION_S)
                    endpoint_removed.set()
                    return
            await asyncio.sleep(0.02)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        tasks = [asyncio.create_task(client(http)) for _ in range(16)]
        watcher = asyncio.create_task(endpoints_controller(http))
        await asyncio.sleep(2.0)
        sigterm_at = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(watcher, timeout=10)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    code = await asyncio.to_thread(agent.proc.wait, 60)
    failures = [r for r in results if r[1] != 200]
    assert not failures, f"{len(failures)} lost: {failures[:5]}\n{agent.log()}"
    assert len(results) > 20
    # Requests sent after SIGTERM, while the removal propagated, were answered.
    assert any(t > sigterm_at + PROPAGATION_S / 2 for t, _ in results)
    assert code == 0, agent.log()
    assert "draining without the front" in agent.log()
