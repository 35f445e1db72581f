"""The activator (greenserve/activator/proxy.py) against a fake API server and a real HTTP replica."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from greenserve import contract as k
from greenserve.activator.proxy import Activator, ActivatorConfig, Endpoint, Metrics, app, parse_host


class FakeCluster:
    """One ModelService models/m (model "m"); its replica appears when `wake()` is called."""

    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []
        self.marks: list[tuple[str, str, float]] = []
        self.replica: Endpoint | None = None
        self.on_mark: asyncio.Event = asyncio.Event()

    async def ready_endpoints(self, namespace: str, name: str) -> list[Endpoint]:
        return list(self.endpoints)

    async def mark_demand(self, namespace: str, name: str, at: float) -> Mapping[str, Any] | None:
        if (namespace, name) != ("models", "m"):
            return None
        self.marks.append((namespace, name, at))
        self.on_mark.set()
        return {"metadata": {"name": name}, "spec": {"model": {"name": "m"}}}

    async def service_by_ip(self, ip: str) -> tuple[str, str] | None:
        return ("models", "m") if ip == "10.96.0.10" else None


@pytest.fixture
async def replica() -> AsyncIterator[TestServer]:
    async def predict(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"predictions": [x * 2 for x in body["instances"]], "host": request.host})

    application = web.Application()
    application.router.add_post("/v1/models/m:predict", predict)
    server = TestServer(application)
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def setup(replica: TestServer) -> AsyncIterator[tuple[TestClient[Any, Any], FakeCluster, Metrics]]:
    cluster = FakeCluster()
    cluster.replica = Endpoint("127.0.0.1", replica.port or 0)
    metrics = Metrics(CollectorRegistry())
    config = ActivatorConfig(max_wait_s=10.0, poll_s=0.05)
    async with aiohttp.ClientSession() as session:
        activator = Activator(cluster, config, session, metrics)
        client = TestClient(TestServer(app(activator)))
        await client.start_server()
        yield client, cluster, metrics
        await client.close()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


HOST = {"Host": "m.models.svc.cluster.local:8501"}


async def test_a_request_at_zero_is_held_marks_demand_and_is_answered_once_ready(
    setup: tuple[TestClient[Any, Any], FakeCluster, Metrics],
) -> None:
    client, cluster, metrics = setup
    started = time.monotonic()
    body = {"instances": [1, 2]}
    call = asyncio.ensure_future(client.post("/v1/models/m:predict", json=body, headers=HOST))
    await asyncio.wait_for(cluster.on_mark.wait(), 5)  # demand marked while the request waits
    held = {"namespace": "models", "modelservice": "m"}
    assert sample(metrics, k.ACTIVATOR_HELD.name, **held) == 1
    assert not call.done()
    assert cluster.replica is not None
    cluster.endpoints = [cluster.replica]  # the operator woke it; its replica is Ready
    resp = await asyncio.wait_for(call, 5)
    assert resp.status == 200
    answer = await resp.json()
    assert answer["predictions"] == [2, 4]
    assert answer["host"] == HOST["Host"]  # the client's Host reaches the replica
    assert time.monotonic() - started < 5
    assert sample(metrics, k.ACTIVATOR_HELD.name, **held) == 0
    assert sample(metrics, k.ACTIVATOR_REQUESTS.name, outcome="forwarded", **held) == 1
    assert [m[:2] for m in cluster.marks] == [("models", "m")]


async def test_past_the_bounded_wait_a_clear_503_with_retry_after(
    setup: tuple[TestClient[Any, Any], FakeCluster, Metrics],
) -> None:
    client, _, metrics = setup
    started = time.monotonic()
    headers = {**HOST, k.ACTIVATOR_MAX_WAIT_HEADER: "0.3"}
    resp = await client.post("/v1/models/m:predict", json={"instances": [1]}, headers=headers)
    waited = time.monotonic() - started
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    assert "no ready replica" in (await resp.json())["error"]
    assert 0.3 <= waited < 3
    labels = {"namespace": "models", "modelservice": "m"}
    assert sample(metrics, k.ACTIVATOR_REQUESTS.name, outcome="timeout", **labels) == 1


async def test_a_client_cannot_wait_longer_than_the_bound() -> None:
    config = ActivatorConfig(max_wait_s=0.5, poll_s=0.05)
    async with aiohttp.ClientSession() as session:
        activator = Activator(FakeCluster(), config, session, Metrics(CollectorRegistry()))
        async with TestClient(TestServer(app(activator))) as client:
            started = time.monotonic()
            headers = {**HOST, k.ACTIVATOR_MAX_WAIT_HEADER: "100000"}
            resp = await client.get("/v1/models/m", headers=headers)
            assert resp.status == 503
            assert 0.5 <= time.monotonic() - started < 3


async def test_unknown_modelservice_or_model_is_a_404_without_waiting(
    setup: tuple[TestClient[Any, Any], FakeCluster, Metrics],
) -> None:
    client, _, _ = setup
    resp = await client.get("/v1/models/x", headers={"Host": "nope.models:8501"})
    assert resp.status == 404 and "no ModelService models/nope" in (await resp.json())["error"]
    resp = await client.get("/v1/models/other", headers=HOST)
    assert resp.status == 404 and "serves model m" in (await resp.json())["error"]
    resp = await client.get("/v1/models/m", headers={"Host": "m:8501"})
    assert resp.status == 404 and "no namespace" in (await resp.json())["error"]


async def test_the_clusterip_names_the_modelservice(
    setup: tuple[TestClient[Any, Any], FakeCluster, Metrics],
) -> None:
    client, cluster, _ = setup
    assert cluster.replica is not None
    cluster.endpoints = [cluster.replica]
    by_ip = {"Host": "10.96.0.10:8501"}
    resp = await client.post("/v1/models/m:predict", json={"instances": [3]}, headers=by_ip)
    assert resp.status == 200 and (await resp.json())["predictions"] == [6]
    assert cluster.marks == []  # ready already: no demand to mark


def test_parse_host() -> None:
    assert parse_host("m.models.svc.cluster.local:8501") == ("models", "m")
    assert parse_host("m.models") == ("models", "m")
    assert parse_host("m") == (None, "m")
    assert parse_host("10.96.0.10:8501") == "10.96.0.10"
    assert parse_host("[fd00::1]:8501") == "fd00::1"
    assert parse_host("fd00::1") == "fd00::1"


async def test_gzip_bodies_pass_through_decoded_with_no_stale_content_encoding() -> None:
    """aiohttp decodes a gzip body on both sides (the request the activator receives, the answer it
    reads): passing the Content-Encoding on with the decoded bytes makes the other end fail to decode
    them (contract.HOP_BY_HOP_HEADERS, shared with the agent's REST front)."""
    seen: list[tuple[str | None, bytes]] = []

    async def predict(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Content-Encoding"), await request.read()))
        body = gzip.compress(json.dumps({"predictions": [2, 4]}).encode())
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    application = web.Application()
    application.router.add_post("/v1/models/m:predict", predict)
    replica = TestServer(application)
    await replica.start_server()
    cluster = FakeCluster()
    cluster.endpoints = [Endpoint("127.0.0.1", replica.port or 0)]
    config = ActivatorConfig(max_wait_s=5.0, poll_s=0.05)
    request = json.dumps({"instances": [1, 2]}).encode()
    try:
        async with aiohttp.ClientSession() as session:
            activator = Activator(cluster, config, session, Metrics(CollectorRegistry()))
            client = TestClient(TestServer(app(activator)))
            await client.start_server()
            try:
                resp = await client.post(
                    "/v1/models/m:predict",
                    data=gzip.compress(request),
                    headers={**HOST, "Content-Encoding": "gzip", "Content-Type": "application/json"},
                )
                assert resp.status == 200
                assert await resp.json() == {"predictions": [2, 4]}
            finally:
                await client.close()
    finally:
        await replica.close()
    # The replica got the request body readable, not labelled gzip over plain bytes.
    assert seen == [(None, request)]
