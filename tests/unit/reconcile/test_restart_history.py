"""A restarted operator refills each ModelService's rise history from the metrics source's past windows
before it decides (reconcile/ticker.py `_backfill`, metrics/prometheus.py `rate_history`), so a restart
converges to the headroom the history gave before it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web

from greenserve import contract as k
from greenserve.api.v1alpha1 import parse_spec
from greenserve.cluster.cache import ClusterCache
from greenserve.config import OperatorConfig
from greenserve.metrics.prometheus import PrometheusSource
from greenserve.metrics.types import PodRef, ServiceMetrics
from greenserve.reconcile import autoscale
from greenserve.reconcile.loop import LoopDeps
from greenserve.reconcile.ticker import Ticker
from support.fake_kube import FakeKube

NOW = 1_800_000_000.0
KEY = ("ns", "m")
SPEC = parse_spec(
    {
        "model": {"name": "m", "storageUri": "pvc://models/m"},
        "scaling": {"minReplicas": 1, "maxReplicas": 20, "target": 100},
        "energy": {"policy": "Balanced"},
        "slo": {"latencyP95Ms": 200},
    }
)
# An hour of one-minute windows with a x3 burst every 12 minutes, then the reading of now.
PAST = [(NOW - 3600 + 60 * i, 1500.0 if i % 12 < 2 else 500.0) for i in range(60)]


def reading(at: float, rps: float) -> ServiceMetrics:
    return ServiceMetrics(*KEY, requests_per_s=rps, power_w=500.0, sampled_at=at, window_s=60.0, stale=False)


def decide(history: autoscale.RateHistory, at: float, rps: float) -> int:
    status = {"desiredReplicas": 1, "readyReplicas": 1}
    return autoscale.decide(
        SPEC, status, reading(at, rps), at + 2, OperatorConfig(), autoscale.FleetBook(), history
    ).desired


class Source:
    """The past windows as a source that keeps them (Prometheus) would give them."""

    def __init__(self, past: list[tuple[float, float]], now: float = NOW, rps: float = 500.0) -> None:
        self.past, self.now, self.rps = past, now, rps
        self.asked: list[tuple[Mapping[tuple[str, str], str | None], float, float]] = []

    async def fleet_metrics(
        self, services: Mapping[tuple[str, str], Sequence[PodRef]]
    ) -> dict[tuple[str, str], ServiceMetrics]:
        return {key: replace(reading(self.now, self.rps), name=key[1]) for key in services}

    async def rate_history(
        self, services: Mapping[tuple[str, str], str | None], until: float, span_s: float
    ) -> dict[tuple[str, str], list[tuple[float, float]]]:
        self.asked.append((dict(services), until, span_s))
        return {key: [p for p in self.past if until - span_s <= p[0] <= until - 60.0] for key in services}


async def test_a_restarted_operator_keeps_the_headroom_its_history_gave(fresh_cache: ClusterCache) -> None:
    before = autoscale.RateHistory()
    for at, rps in PAST:
        decide(before, at, rps)
    at, rps = NOW, 500.0
    kept = decide(before, at, rps)
    flat = decide(autoscale.RateHistory(), at, rps)
    assert kept > 2 * flat  # the bursts' headroom, as test_autoscale_adapter.py shows

    # The operator restarts: its history is empty, and the first tick's reading refills it from the source.
    source = Source(PAST, at, rps)
    fresh_cache.msvcs[KEY] = {"metadata": {"name": KEY[1], "namespace": KEY[0]}, "spec": {}}
    ticker = Ticker(LoopDeps(FakeKube(), OperatorConfig(), source=source), fresh_cache)  # type: ignore[arg-type]
    readings = await ticker._readings([KEY])
    assert readings[KEY] is not None
    assert decide(autoscale.HISTORY, at, rps) == kept
    assert autoscale.HISTORY.factor(KEY) == pytest.approx(before.factor(KEY))
    assert source.asked == [({KEY: None}, at, autoscale.RISE_HISTORY_S)]
    # Once per ModelService: the next tick asks nothing, and a history with readings is never refilled.
    source.now += 60
    await ticker._readings([KEY])
    assert len(source.asked) == 1


async def test_a_source_without_history_or_an_error_leaves_the_history_to_refill_as_it_runs() -> None:
    class Broken(Source):
        async def rate_history(self, *_: Any) -> dict[tuple[str, str], list[tuple[float, float]]]:
            raise RuntimeError("down")

    ticker = Ticker(LoopDeps(FakeKube(), OperatorConfig(), source=Broken([])))  # type: ignore[arg-type]
    await ticker._backfill({KEY: reading(NOW, 500.0)}, {})
    assert not autoscale.HISTORY.knows(KEY) and KEY not in ticker.state.backfilled
    # A stale reading is not a restart's first decision: nothing is asked for it.
    source = Source(PAST)
    ticker = Ticker(LoopDeps(FakeKube(), OperatorConfig(), source=source))  # type: ignore[arg-type]
    await ticker._backfill({KEY: replace(reading(NOW, 500.0), stale=True)}, {})
    assert source.asked == []


# --- Prometheus: one set of range queries for the fleet ---------------------------------------------


def matrix(labels: dict[str, str], values: list[float], start: float, step: float) -> dict[str, Any]:
    return {"metric": labels, "values": [[start + i * step, str(v)] for i, v in enumerate(values)]}


@pytest.fixture
async def prometheus() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    asked: list[dict[str, str]] = []

    async def query_range(request: web.Request) -> web.Response:
        form = {key: str(v) for key, v in (await request.post()).items()}
        asked.append(form)
        q, start, step = form["query"], float(form["start"]), float(form["step"])
        series: list[dict[str, Any]] = []
        own = k.LABEL_MODELSERVICE
        if k.TFS_REQUEST_COUNT in q and own in q.split("(")[1]:
            series = [matrix({"namespace": "ns", own: "a"}, [600.0, 1200.0], start, step)]
        elif k.REQUESTS.name in q and own in q.split("(")[1]:
            # a's agent counts too (TF Serving's count is preferred); b has only the agent's.
            series = [
                matrix({"namespace": "ns", own: "a"}, [1.0, 1.0], start, step),
                matrix({"namespace": "ns", own: "b"}, [60.0, 60.0], start, step),
            ]
        elif k.REQUESTS.name in q:  # pool pods, by model
            series = [
                matrix({"namespace": "ns", k.LABEL_MODEL: "model-b"}, [120.0, 0.0], start, step),
                matrix({"namespace": "ns", k.LABEL_MODEL: "twin"}, [600.0, 600.0], start, step),
            ]
        return web.json_response({"status": "success", "data": {"resultType": "matrix", "result": series}})

    app = web.Application()
    app.router.add_post("/api/v1/query_range", query_range)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", asked
    await runner.cleanup()


async def test_prometheus_gives_each_modelservices_past_windows_from_four_range_queries(
    prometheus: tuple[str, list[dict[str, str]]],
) -> None:
    url, asked = prometheus
    source = PrometheusSource(url, window_s=60.0)
    services = {("ns", "a"): None, ("ns", "b"): "model-b", ("ns", "t1"): "twin", ("ns", "t2"): "twin"}
    try:
        got = await source.rate_history(services, NOW, 3600.0)
    finally:
        await source.close()
    assert len(asked) == 4 and {float(f["step"]) for f in asked} == {60.0}
    # The newest point is the window before the reading's: the reading itself is recorded live.
    assert {float(f["end"]) for f in asked} == {NOW - 60} and {float(f["start"]) for f in asked} == {
        NOW - 3600
    }
    start = NOW - 3600
    assert got[("ns", "a")] == [(start, 10.0), (start + 60, 20.0)]  # TF Serving's count, per second
    # Its own replicas' and its pool's counts, summed per window.
    assert got[("ns", "b")] == [(start, 3.0), (start + 60, 1.0)]
    # A model name two ModelServices share in one namespace: whose requests they were is not known.
    assert ("ns", "t1") not in got and ("ns", "t2") not in got


def test_a_modelservice_silent_for_the_history_span_is_forgotten() -> None:
    """Deleted or long silent: its readings, headroom and sized rate go once the others' readings are an
    hour past its last (swept once per window, not per reading: at 1,000 ModelServices a sweep per
    reading made every tick quadratic)."""
    history, gone, other = autoscale.RateHistory(), ("ns", "gone"), ("ns", "other")
    history.record(gone, NOW, 5.0, 60.0)
    history.set_factor(gone, 2.0)
    history.set_sized_rate(gone, NOW, 6.0)
    for i in range(1, 62):
        history.record(other, NOW + 60 * i, 1.0, 60.0)
        assert history.knows(gone) == (60 * i <= autoscale.RISE_HISTORY_S)
    assert history.factor(gone) == 1.0 and history.sized_rate(gone) is None and history.knows(other)


def test_the_decision_reports_what_the_load_seen_asks_for_without_the_rise_headroom() -> None:
    """`Decision.bare` is the count without the rise headroom that the history gives: replicas between
    it and the decision are held for rises not yet come, which load seen elsewhere may take
    (reconcile/give_way.py)."""
    history = autoscale.RateHistory()
    for at, rps in PAST:
        decide(history, at, rps)
    status = {"desiredReplicas": 1, "readyReplicas": 1}
    d = autoscale.decide(
        SPEC, status, reading(NOW, 500.0), NOW + 2, OperatorConfig(), autoscale.FleetBook(), history
    )
    flat = autoscale.decide(
        SPEC,
        status,
        reading(NOW, 500.0),
        NOW + 2,
        OperatorConfig(),
        autoscale.FleetBook(),
        autoscale.RateHistory(),
    )
    assert d.bare == flat.desired == flat.bare < d.desired  # headroom above what 500 req/s asks for
    # No reading: nothing is known to be spare.
    assert (
        autoscale.decide(SPEC, status, None, NOW + 2, OperatorConfig(), autoscale.FleetBook(), history).bare
        is None
    )
