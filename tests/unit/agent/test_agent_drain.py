"""SIGTERM drain: readiness turns false first, in-flight and late requests complete, then the agent exits."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from agent_proc import MODEL, free_ports, make_saved_model, sigterm_under_load, start_agent
from aiohttp import web

from greenserve_agent.simulated import SimulatedNvml
from greenserve_agent.supervisor import AgentConfig, Supervisor, filter_tfs_exposition
from support.http import local_server

SLOW_S = 1.0


class SleeperSupervisor(Supervisor):
    """The backend process is a placeholder; REST goes to an in-test slow backend on ``backend_port``."""

    def _backend_command(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
async def slow_backend() -> AsyncIterator[int]:
    async def status(_r: web.Request) -> web.Response:
        return web.json_response({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]})

    async def predict(_r: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_S)
        return web.json_response({"predictions": [[1.0]]})

    app = web.Application()
    app.router.add_get(f"/v1/models/{MODEL}", status)
    app.router.add_post(f"/v1/models/{MODEL}:predict", predict)
    async with local_server(app) as port:
        yield port


async def test_drain_finishes_in_flight_and_late_requests_before_stopping(slow_backend: int) -> None:
    rest, metrics = free_ports(2)
    cfg = AgentConfig(
        model_name=MODEL, model_base_path="/unused", rest_port=rest, metrics_port=metrics,
        host="127.0.0.1", backend_rest_port=slow_backend, drain_quiet_s=0.3, drain_timeout_s=20,
    )  # fmt: skip
    sup = SleeperSupervisor(cfg, nvml=SimulatedNvml())
    await sup.start()
    front = f"http://127.0.0.1:{cfg.rest_port}"
    side = f"http://127.0.0.1:{cfg.metrics_port}"
    async with aiohttp.ClientSession() as http:
        try:
            for _ in range(100):
                async with http.get(f"{front}/v1/models/{MODEL}") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("never ready")

            async def predict() -> int:
                async with http.post(f"{front}/v1/models/{MODEL}:predict", json={"instances": [[1]]}) as r:
                    await r.read()
                    return r.status

            first = asyncio.create_task(predict())
            for _ in range(500):  # polled: the tracker is plain state, not an awaitable
                if sup.tracker.count:
                    break
                await asyncio.sleep(0.01)
            drain = asyncio.create_task(sup.drain())
            await asyncio.sleep(0.05)
            # Readiness is false at once, on the probe path and on /ready ...
            async with http.get(f"{front}/v1/models/{MODEL}") as r:
                assert r.status == 503
            async with http.get(f"{side}/ready") as r:
                assert r.status == 503 and (await r.json())["draining"] is True
            # ... but a client that has not seen the endpoint removal yet is still served.
            late = asyncio.create_task(predict())
            await asyncio.sleep(0.1)
            assert not drain.done()
            t0 = time.monotonic()
            assert await first == 200
            assert await late == 200
            await asyncio.wait_for(drain, timeout=10)
            # The drain ended only after the last request plus the quiet period.
            assert time.monotonic() - t0 >= cfg.drain_quiet_s * 0.9
        finally:
            proc = sup.process
            await sup.stop()
    assert proc is not None and proc.returncode == -signal.SIGTERM


def test_filter_keeps_only_tf_serving_families() -> None:
    text = (
        "# TYPE :tensorflow:serving:request_count counter\n"
        ':tensorflow:serving:request_count{model_name="m",status="OK"} 3\n'
        "# TYPE :tensorflow:core:graph_runs counter\n"
        ":tensorflow:core:graph_runs 9\n"
    )
    out = filter_tfs_exposition(text)
    assert "request_count" in out and "graph_runs" not in out


@pytest.mark.tensorflow
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigterm_under_concurrent_load_loses_no_request(tmp_path: Path) -> None:
    base = await asyncio.to_thread(make_saved_model, tmp_path)
    agent = start_agent(base, tmp_path / "agent.log", "--agent-drain-quiet=0.5", "--agent-drain-timeout=30")
    try:
        await asyncio.to_thread(agent.wait_ready)
        # Readiness on the REST port's model status, as the pod's probe reads it with the front on.
        run = await sigterm_under_load(agent, f"{agent.rest}/v1/models/{MODEL}", clients=24)
    finally:
        agent.stop()
    results, sigterm_at, code = run.results, run.sigterm_at, run.exit_code
    failures = [r for r in results if r[1] != 200]
    assert not failures, f"{len(failures)} lost: {failures[:5]}\n{agent.log()}"
    assert len(results) > 50
    # Requests were in flight when SIGTERM arrived and were answered afterwards.
    assert any(t > sigterm_at for t, _ in results)
    assert code == 0, agent.log()
    assert "draining" in agent.log()
