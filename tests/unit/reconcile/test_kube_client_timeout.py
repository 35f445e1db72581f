"""The REST client's timeout limits the API server's answer, not the wait for a pooled connection: a
thousand ModelServices reconciled at once (a bulk create, a restart) queue most of their requests in the
client's pool, and none of them may fail there (kopf would retry them all later, each again queued)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from greenserve.cluster.client import PODS, KubeClient
from greenserve.cluster.credentials import Credentials

ANSWER_S = 0.5  # each request takes the server this long
TIMEOUT_S = 2.0  # well above one answer, well below the queue's wait
REQUESTS = 500  # five rounds through the client's 100 pooled connections: 2.5 s for the last


@pytest.fixture
async def slow_server(unused_tcp_port: int) -> AsyncIterator[str]:
    async def get_pod(request: web.Request) -> web.Response:
        await asyncio.sleep(ANSWER_S)
        name = request.match_info["name"]
        return web.json_response({"kind": "Pod", "metadata": {"name": name, "namespace": "ns"}})

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/pods/{name}", get_pod)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port, backlog=REQUESTS).start()
    yield f"http://127.0.0.1:{unused_tcp_port}"
    await runner.cleanup()


async def test_requests_queued_in_the_pool_do_not_time_out(slow_server: str) -> None:
    async with KubeClient(Credentials(server=slow_server), timeout_s=TIMEOUT_S) as kube:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        got = await asyncio.gather(*(kube.get(PODS, f"p{i}", "ns") for i in range(REQUESTS)))
        took = loop.time() - t0
    assert [p["metadata"]["name"] for p in got] == [f"p{i}" for i in range(REQUESTS)]
    assert took > TIMEOUT_S  # the last requests did wait longer than the timeout, in the pool
