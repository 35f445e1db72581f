"""Quiet at rest: the metrics tick and the apply cache cost the API server nothing while nothing changes,
and still act at once when something does (in-memory API: tests/support/fake_kube.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
import pytest
from prometheus_client import CollectorRegistry

from greenserve.api import constants as c
from greenserve.cluster.cache import CACHE, apply_if_changed, obj_key
from greenserve.cluster.client import CONFIGMAPS, DEPLOYMENTS, MODELSERVICES, PDBS, PODS, SERVICES
from greenserve.config import OperatorConfig
from greenserve.contract import OP_ENERGY, OP_RPS
from greenserve.handlers.cache import serving_pod_seen
from greenserve.metrics.operator_metrics import OperatorMetrics
from greenserve.metrics.types import PodRef, ServiceMetrics
from greenserve.reconcile import modelservice as rec
from greenserve.reconcile.loop import LoopDeps
from greenserve.reconcile.ticker import Ticker, restamped
from support.fake_kube import FakeKube

NS, NAME = "ml", "svc"
KEY = (NS, NAME)
T0 = 2_000_000.0
CONFIG = OperatorConfig(status_refresh_s=300.0, full_resync_s=3600.0)


# Each test starts from an empty, enabled cache (conftest.py).
pytestmark = pytest.mark.usefixtures("fresh_cache")


class FakeSource:
    """A metrics source whose reading the test sets; counts fleet reads."""

    def __init__(self) -> None:
        self.rps = 10.0
        self.energy = 1000.0
        self.now = T0
        self.reads = 0

    async def service_metrics(
        self, namespace: str, name: str, pods: Sequence[PodRef] | None = None
    ) -> ServiceMetrics:
        return ServiceMetrics(
            namespace,
            name,
            power_w=60.0,
            energy_j=self.energy,
            energy_window_j=600.0,
            requests_per_s=self.rps,
            gpu_utilization=0.1,
            inflight_requests=0.0,
            rate_history=(self.rps, self.rps, self.rps),
            replicas_reporting=1,
            gpus=1,
            simulated=True,
            pod_energy_j={"svc-0": self.energy},
            window_s=60.0,
            sampled_at=self.now,
            stale=False,
        )

    async def fleet_metrics(
        self, services: Mapping[tuple[str, str], Sequence[PodRef]]
    ) -> dict[tuple[str, str], ServiceMetrics]:
        self.reads += 1
        return {k: await self.service_metrics(*k, v) for k, v in services.items()}

    async def close(self) -> None:
        return None


def msvc() -> dict[str, Any]:
    return {
        "apiVersion": f"{c.GROUP}/{c.VERSION}",
        "kind": "ModelService",
        "metadata": {"name": NAME, "namespace": NS, "generation": 1, "uid": "u1"},
        "spec": {
            "model": {"name": "m", "storageUri": "pvc://models/m"},
            "scaling": {"minReplicas": 1, "maxReplicas": 8, "target": 50, "scaleDownDelaySeconds": 60},
        },
    }


def watch(kube: FakeKube) -> None:
    """What kopf's watches would deliver: the API's current objects into the cache."""
    for (plural, _, _), obj in list(kube.objects.items()):
        if plural == MODELSERVICES.plural:
            CACHE.observe_msvc(obj)
        elif plural in (DEPLOYMENTS.plural, SERVICES.plural, PDBS.plural, CONFIGMAPS.plural):
            CACHE.observe_owned(obj)
        elif plural == PODS.plural:
            CACHE.observe_pod(obj)


@pytest.fixture
def world() -> tuple[FakeKube, FakeSource, Ticker]:
    kube = FakeKube()
    kube.put(MODELSERVICES, msvc())
    source = FakeSource()
    deps = LoopDeps(kube=kube, config=CONFIG, source=source, clock=lambda: source.now)  # type: ignore[arg-type]
    watch(kube)
    return kube, source, Ticker(deps, CACHE)


async def tick(kube: FakeKube, source: FakeSource, ticker: Ticker, at: float) -> list[tuple[str, str, str]]:
    """One tick at `at`; returns the API calls it made, then lets the watch catch up."""
    source.now = at
    kube.calls.clear()
    await ticker.tick(at)
    calls = list(kube.calls)
    watch(kube)
    return calls


World = tuple[FakeKube, FakeSource, Ticker]


async def test_an_idle_fleet_costs_the_api_server_nothing(world: World) -> None:
    kube, source, ticker = world
    first = await tick(kube, source, ticker, T0)
    assert ("apply", "deployments", NAME) in first  # the first look writes everything once
    assert any(verb == "patch/status" for verb, _, _ in first)
    for i in range(1, 15):  # a couple of minutes of ticks, nothing changes
        assert await tick(kube, source, ticker, T0 + 15 * i) == [], f"tick {i} talked to the API server"
    assert source.reads == 15  # the metrics were read every tick all the same


async def test_slow_figures_are_refreshed_by_one_guarded_patch(world: World) -> None:
    kube, source, ticker = world
    await tick(kube, source, ticker, T0)
    written = kube.peek(MODELSERVICES, NAME, NS)
    assert written is not None
    before = written["status"]["energyJoules"]
    source.energy += 500.0  # idle GPUs keep drawing power: energy grows every tick
    assert await tick(kube, source, ticker, T0 + 15) == []  # not due yet
    t = T0 + 15
    while t + 15 < T0 + CONFIG.status_refresh_s:  # every tick in between (a skipped one is a gap)
        t += 15
        assert await tick(kube, source, ticker, t) == []
    calls = await tick(kube, source, ticker, T0 + CONFIG.status_refresh_s + 1)
    assert calls == [("patch/status", "modelservices", NAME)]  # one request, no GET, no apply, no LIST
    after = kube.peek(MODELSERVICES, NAME, NS)
    assert after is not None and after["status"]["energyJoules"] == pytest.approx(before + 500.0)


async def test_a_decision_change_acts_at_once(world: World) -> None:
    kube, source, ticker = world
    await tick(kube, source, ticker, T0)
    await tick(kube, source, ticker, T0 + 15)
    source.rps = 300.0  # six replicas' worth at target 50
    calls = await tick(kube, source, ticker, T0 + 30)
    assert ("apply", "deployments", NAME) in calls
    dep = kube.peek(DEPLOYMENTS, NAME, NS)
    assert dep is not None and dep["spec"]["replicas"] > 1
    # Services and PDBs did not change: only the Deployment was re-applied.
    assert ("apply", "services", NAME) not in calls and ("apply", "poddisruptionbudgets", NAME) not in calls


def serving_pod(kube: FakeKube) -> None:
    """The Deployment's one replica, Ready, running its current template (kwok would start it)."""
    dep = kube.peek(DEPLOYMENTS, NAME, NS)
    assert dep is not None
    template = dep["spec"]["template"]
    kube.put(
        PODS,
        {
            "metadata": {
                "name": f"{NAME}-0",
                "namespace": NS,
                "labels": dict(template["metadata"]["labels"]),
                "annotations": dict(template["metadata"].get("annotations") or {}),
            },
            "spec": {"nodeName": "n1"},
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        },
    )
    dep["status"] = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    kube.put(DEPLOYMENTS, dep)


RESYNC = dataclasses.replace(CONFIG, full_resync_s=60.0)


@pytest.fixture
def resyncing(world: World) -> World:
    ticker = world[2]
    ticker.deps = dataclasses.replace(ticker.deps, config=RESYNC)
    return world


async def settled(kube: FakeKube, source: FakeSource, ticker: Ticker) -> float:
    """The first look, the pod coming up and the reconcile its Deployment event triggers; returns the
    time of the last tick."""
    await tick(kube, source, ticker, T0)
    serving_pod(kube)
    watch(kube)
    # What handlers/modelservice.py does on the Deployment's status event.
    await rec.refresh_status(kube, NS, NAME, CONFIG)  # type: ignore[arg-type]
    watch(kube)
    t = T0 + 15
    await tick(kube, source, ticker, t)  # the first tick that sees the pod's metrics
    return t


async def test_a_resync_that_finds_nothing_different_sends_nothing(resyncing: World) -> None:
    kube, source, ticker = resyncing
    t = await settled(kube, source, ticker)
    for _ in range(4 * int(RESYNC.full_resync_s / 15)):  # four resync periods
        t += 15
        assert await tick(kube, source, ticker, t) == [], f"tick at +{t - T0:.0f} s talked to the API server"
    assert ticker.state.resynced_from_cache >= 3  # the resyncs ran, against the cache
    assert ticker.state.resynced == 0


async def test_a_resync_repairs_what_no_event_reported(resyncing: World) -> None:
    kube, source, ticker = resyncing
    t = await settled(kube, source, ticker)
    # Status lost its URL (a restore from backup, say): no tick decision depends on it, so only the
    # resync notices, then writes it back from a fresh read.
    stored = kube.peek(MODELSERVICES, NAME, NS)
    assert stored is not None and stored["status"].get("url")
    del stored["status"]["url"]
    kube.put(MODELSERVICES, stored)
    watch(kube)
    calls: list[tuple[str, str, str]] = []
    while t < T0 + 2 * RESYNC.full_resync_s and ("patch/status", "modelservices", NAME) not in calls:
        t += 15
        calls = await tick(kube, source, ticker, t)
    assert ("get", "modelservices", NAME) in calls  # the real run reads fresh first
    assert ("patch/status", "modelservices", NAME) in calls
    again = kube.peek(MODELSERVICES, NAME, NS)
    assert again is not None and again["status"].get("url")
    assert ticker.state.resynced == 1


async def test_apply_cache_reapplies_what_someone_else_changed_or_deleted() -> None:
    kube = FakeKube()
    obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME, "namespace": NS, "labels": {c.LABEL_MANAGED_BY: c.MANAGED_BY}},
        "spec": {"ports": [{"port": 8501}]},
    }
    await apply_if_changed(kube, obj)
    watch(kube)
    await apply_if_changed(kube, obj)
    assert [v for v, _, _ in kube.calls] == ["apply"]  # the second apply was skipped
    # Someone edits it: the watch reports drift and the next apply goes through.
    edited = kube.peek(SERVICES, NAME, NS)
    assert edited is not None
    edited["spec"]["ports"] = [{"port": 9999}]
    assert CACHE.observe_owned(kube.put(SERVICES, edited)) is True
    await apply_if_changed(kube, obj)
    assert [v for v, _, _ in kube.calls] == ["apply", "apply"]
    # Someone deletes it: drift again, and it is applied back.
    kube.remove(SERVICES, NAME, NS)
    assert CACHE.observe_owned(edited, deleted=True) is True
    await apply_if_changed(kube, obj)
    assert kube.peek(SERVICES, NAME, NS) is not None
    assert obj_key(obj) in CACHE.applied


def test_restart_restamps_held_recommendations_so_no_scale_down_comes_early() -> None:
    raw = {"recommendations": [[T0 - 290, 6], [T0 - 10, 2]], "idleSince": None}
    out = restamped(raw, T0)
    assert out["recommendations"] == [[T0, 6], [T0, 2]] and out["idleSince"] is None


def test_the_cached_modelservice_drops_what_nobody_reads_from_it() -> None:
    body = msvc()
    body["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    diffbase = f"{c.GROUP}/last-handled-configuration"
    body["metadata"]["annotations"] = {diffbase: '{"spec": {}}', "team": "search"}
    CACHE.observe_msvc(body)
    meta = CACHE.msvcs[KEY]["metadata"]
    assert "managedFields" not in meta
    assert meta["annotations"] == {"team": "search"}
    assert CACHE.msvcs[KEY]["spec"] == body["spec"]


async def test_a_reconcile_reads_pods_from_the_cache_when_it_agrees_with_the_deployment(world: World) -> None:
    kube, source, ticker = world
    await settled(kube, source, ticker)
    kube.calls.clear()
    await rec.refresh_status(kube, NS, NAME, CONFIG)  # type: ignore[arg-type]
    assert ("get", "modelservices", NAME) in kube.calls  # the ModelService itself is read fresh
    assert not any(verb == "list" for verb, _, _ in kube.calls)
    # The pod watch lags behind the Deployment (its Ready pod not seen yet): the pods are listed.
    CACHE.pods.clear()
    kube.calls.clear()
    await rec.refresh_status(kube, NS, NAME, CONFIG)  # type: ignore[arg-type]
    assert ("list", "pods", NS) in kube.calls


async def test_a_tick_acts_on_many_modelservices_side_by_side(world: World) -> None:
    kube, _, ticker = world
    for i in range(5):
        other = msvc()
        other["metadata"].update(name=f"svc{i}", uid=f"u{i}")
        kube.put(MODELSERVICES, other)
    watch(kube)
    working = peak = acted = 0

    async def act(*_: object) -> None:  # each first look acts; its requests take a while
        nonlocal working, peak, acted
        working += 1
        peak = max(peak, working)
        await asyncio.sleep(0.05)
        working -= 1
        acted += 1

    ticker._act = act  # type: ignore[method-assign]
    await ticker.tick(T0)
    assert acted == 6
    assert peak == 6  # not one after the other


async def test_a_burst_of_owned_object_events_refreshes_its_modelservice_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube, source, ticker = world
    await settled(kube, source, ticker)
    runs = 0
    real = rec.refresh_from_cache

    async def counted(*args: Any) -> bool:
        nonlocal runs
        runs += 1
        return await real(*args)

    monkeypatch.setattr(rec, "refresh_from_cache", counted)
    # A rollout's Deployment status events, one after the other, while the first refresh waits its turn.
    scheduled = [rec.refresh_soon(kube, NS, NAME, CONFIG) for _ in range(5)]  # type: ignore[arg-type]
    assert scheduled == [True, False, False, False, False]
    await refreshed()
    assert runs == 1
    # Once that refresh has started, the next event schedules another: nothing is missed.
    assert rec.refresh_soon(kube, NS, NAME, CONFIG) is True  # type: ignore[arg-type]
    await refreshed()
    assert runs == 2


async def refreshed() -> None:
    while rec._TASKS:
        await asyncio.gather(*rec._TASKS)


async def test_a_replica_becoming_ready_is_written_from_the_cache(world: World) -> None:
    """An owned Deployment's event is reconciled from the watch-fed cache: status first (guarded by the
    cached resourceVersion), then the pod's warm-up protection and the Event, and no GET."""
    kube, source, ticker = world
    await tick(kube, source, ticker, T0)  # the Deployment exists, no replica yet
    serving_pod(kube)
    watch(kube)
    kube.calls.clear()
    assert rec.refresh_soon(kube, NS, NAME, CONFIG)  # type: ignore[arg-type]  # the Deployment's event
    await refreshed()
    assert [(verb, plural) for verb, plural, _ in kube.calls] == [
        ("patch/status", "modelservices"),
        ("patch", "pods"),
        ("create", "events"),  # Normal: Ready
    ]
    stored = kube.peek(MODELSERVICES, NAME, NS)
    assert stored is not None
    ready = next(x for x in stored["status"]["conditions"] if x["type"] == "Ready")
    assert ready["status"] == "True" and stored["status"]["readyReplicas"] == 1
    pod = kube.peek(PODS, f"{NAME}-0", NS)
    assert pod is not None and c.ANN_KARPENTER_DO_NOT_DISRUPT not in pod["metadata"]["annotations"]
    # Our own write is in the cache before its watch event: the next event starts from it.
    assert CACHE.msvcs[KEY]["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


async def test_a_pod_turning_ready_makes_its_modelservice_ready_before_the_deployment_counts_it(
    world: World,
) -> None:
    """The deployment controller sums the pods' Ready into the Deployment's status seconds later under
    load; the pod's own event is the ModelService's news (handlers/cache.py), settled from the cache."""
    kube, source, ticker = world
    await tick(kube, source, ticker, T0)  # the Deployment exists, no replica yet
    serving_pod(kube)
    dep = kube.peek(DEPLOYMENTS, NAME, NS)
    assert dep is not None
    dep["status"] = {"replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1}  # Ready not counted yet
    kube.put(DEPLOYMENTS, dep)
    watch(kube)  # the Deployment's and the ModelService's events; the pod's goes through its handler
    CACHE.pods.clear()
    pod = kube.peek(PODS, f"{NAME}-0", NS)
    assert pod is not None
    memo = kopf.Memo(kube=kube, config=CONFIG)
    kube.calls.clear()
    await serving_pod_seen(body=pod, type="ADDED", memo=memo)
    await refreshed()
    assert [(verb, plural) for verb, plural, _ in kube.calls] == [
        ("patch/status", "modelservices"),
        ("patch", "pods"),
        ("create", "events"),  # Normal: Ready
    ]
    stored = kube.peek(MODELSERVICES, NAME, NS)
    assert stored is not None
    ready = next(x for x in stored["status"]["conditions"] if x["type"] == "Ready")
    assert ready["status"] == "True" and stored["status"]["readyReplicas"] == 1
    # An event that does not change whether the pod serves is no news.
    kube.calls.clear()
    await serving_pod_seen(body=kube.peek(PODS, f"{NAME}-0", NS), type="MODIFIED", memo=memo)
    await refreshed()
    assert kube.calls == []


async def test_a_stale_cache_falls_back_to_a_fresh_read(world: World) -> None:
    kube, source, ticker = world
    await tick(kube, source, ticker, T0)
    serving_pod(kube)
    watch(kube)  # the pod's and the Deployment's events
    # Someone changes the ModelService; the watch has not delivered it yet.
    stored = kube.peek(MODELSERVICES, NAME, NS)
    assert stored is not None
    stored["metadata"]["labels"] = {"team": "search"}
    kube.put(MODELSERVICES, stored)
    kube.calls.clear()
    assert rec.refresh_soon(kube, NS, NAME, CONFIG)  # type: ignore[arg-type]
    await refreshed()
    assert kube.calls[:3] == [
        ("patch/status", "modelservices", NAME),  # refused: 409
        ("get", "modelservices", NAME),
        ("patch/status", "modelservices", NAME),
    ]
    again = kube.peek(MODELSERVICES, NAME, NS)
    assert again is not None and again["metadata"]["labels"] == {"team": "search"}
    assert next(x for x in again["status"]["conditions"] if x["type"] == "Ready")["status"] == "True"


async def test_a_spec_change_writes_status_once_with_every_condition_restamped(resyncing: World) -> None:
    """A spec change is observed by one status write that carries the new generation on every condition,
    those the change reconcile does not recompute (MetricsAvailable, Scaling) included: one left behind
    made every later resync find a stale condition and write it, at 1,000 ModelServices about 2
    requests per second (a GET and a status PATCH each) long after the change."""
    kube, source, ticker = resyncing
    t = await settled(kube, source, ticker)
    stored = kube.peek(MODELSERVICES, NAME, NS)
    assert stored is not None
    stored["spec"]["scaling"]["maxReplicas"] = 9
    stored["metadata"]["generation"] = 2
    kube.put(MODELSERVICES, stored)
    watch(kube)
    kube.calls.clear()
    await rec.reconcile(kube, stored, CONFIG)  # type: ignore[arg-type]  # kopf's update handler
    assert kube.calls.count(("patch/status", "modelservices", NAME)) == 1
    watch(kube)
    status = (kube.peek(MODELSERVICES, NAME, NS) or {})["status"]
    assert status["observedGeneration"] == 2
    stamps = {x["type"]: x.get("observedGeneration") for x in status["conditions"]}
    assert {"MetricsAvailable", "Scaling", "Ready"} <= set(stamps)
    assert set(stamps.values()) == {2}, stamps
    for _ in range(4 * int(RESYNC.full_resync_s / 15)):  # four resync periods after the change
        t += 15
        assert await tick(kube, source, ticker, t) == [], f"tick at +{t - T0:.0f} s talked to the API server"
    assert ticker.state.resynced == 0


def spec_change(kube: FakeKube, max_replicas: int) -> dict[str, Any]:
    """Someone edits the scaling bounds (no owned object changes) and the watch delivers it."""
    stored = kube.peek(MODELSERVICES, NAME, NS)
    assert stored is not None
    stored["spec"]["scaling"]["maxReplicas"] = max_replicas
    stored["metadata"]["generation"] += 1
    body = kube.put(MODELSERVICES, stored)
    watch(kube)
    return body


async def test_a_spec_change_that_moves_no_owned_object_is_written_from_the_cache(world: World) -> None:
    """kopf's update handler settles a bounds change with one status write guarded by the cached
    resourceVersion, without a GET of the ModelService first: at a change of 1,000 ModelServices the
    GET was a third of the operator's requests (issue 15, a patch of all N observed within 30 s)."""
    kube, source, ticker = world
    await settled(kube, source, ticker)
    body = spec_change(kube, 9)
    kube.calls.clear()
    out = await rec.reconcile_change(kube, body, CONFIG)  # type: ignore[arg-type]
    assert out.ready
    assert kube.calls == [("patch/status", "modelservices", NAME)]
    stored = kube.peek(MODELSERVICES, NAME, NS)
    assert stored is not None and stored["status"]["observedGeneration"] == body["metadata"]["generation"]
    # The write is in the cache before its watch event comes.
    assert CACHE.msvcs[KEY]["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


async def test_a_spec_change_the_cache_cannot_settle_is_reconciled_from_a_fresh_read(world: World) -> None:
    kube, source, ticker = world
    await settled(kube, source, ticker)
    # A change that moves the Deployment (a new CPU request) is applied from a fresh read.
    stored = kube.peek(MODELSERVICES, NAME, NS)
    assert stored is not None
    stored["spec"]["runtime"] = {"resources": {"requests": {"cpu": "2"}}}
    stored["metadata"]["generation"] += 1
    body = kube.put(MODELSERVICES, stored)
    watch(kube)
    kube.calls.clear()
    await rec.reconcile_change(kube, body, CONFIG)  # type: ignore[arg-type]
    assert kube.calls[0] == ("get", "modelservices", NAME)
    assert ("apply", "deployments", NAME) in kube.calls
    # A cache behind the API server (another writer's change not delivered yet) is refused by the
    # guarded write, and the reconcile reads fresh: nothing is decided on an old version.
    body = spec_change(kube, 7)
    stored = kube.peek(MODELSERVICES, NAME, NS)
    assert stored is not None
    stored["metadata"]["labels"] = {"team": "search"}
    kube.put(MODELSERVICES, stored)
    kube.calls.clear()
    await rec.reconcile_change(kube, body, CONFIG)  # type: ignore[arg-type]
    assert kube.calls[:3] == [
        ("patch/status", "modelservices", NAME),  # refused: 409
        ("get", "modelservices", NAME),
        ("patch/status", "modelservices", NAME),
    ]
    # An event newer than the cache (its watch event not handled yet) is not answered from the cache.
    body = spec_change(kube, 6)
    newer = kube.put(MODELSERVICES, {**body, "spec": {**body["spec"], "energy": {"policy": "Performance"}}})
    kube.calls.clear()
    await rec.reconcile_change(kube, newer, CONFIG)  # type: ignore[arg-type]
    assert kube.calls[0] == ("get", "modelservices", NAME)


async def test_a_tick_writes_a_changed_condition_from_the_cache(world: World) -> None:
    """A condition the tick changes (here the metrics going missing) costs one status write guarded by
    the cached resourceVersion, without a GET first: at a bulk create of 1,000 ModelServices every
    one's first look with fresh metrics is such a write, and they overlapped the fleet's spec change."""
    kube, source, ticker = world
    t = await settled(kube, source, ticker)

    async def nothing(services: Mapping[tuple[str, str], Sequence[PodRef]]) -> dict[Any, Any]:
        return {}

    source.fleet_metrics = nothing  # type: ignore[method-assign]
    calls = await tick(kube, source, ticker, t + 15)
    assert calls == [("patch/status", "modelservices", NAME)]
    status = (kube.peek(MODELSERVICES, NAME, NS) or {})["status"]
    metrics = next(x for x in status["conditions"] if x["type"] == "MetricsAvailable")
    assert metrics["status"] == "False"
    assert ticker.state.acted >= 1
    # The next tick finds it written: nothing to send.
    assert await tick(kube, source, ticker, t + 30) == []


async def test_the_operators_gauges_follow_a_tick_that_writes_nothing(world: World) -> None:
    """The operator's per-ModelService gauges cost no request: they follow every reading, also on the
    ticks whose figures wait for `status_refresh_s` before status takes them."""
    kube, source, ticker = world
    registry = CollectorRegistry()
    ticker.deps = dataclasses.replace(ticker.deps, metrics=OperatorMetrics(registry))
    t = await settled(kube, source, ticker)
    labels = {"namespace": NS, "modelservice": NAME}
    source.rps, source.energy = 12.0, 1900.0  # the same replica count: nothing to write now
    assert await tick(kube, source, ticker, t + 15) == []
    assert registry.get_sample_value(OP_RPS.family, labels) == 12.0
    assert registry.get_sample_value("greenserve_modelservice_replicas_desired", labels) == 1.0
    energy = registry.get_sample_value(OP_ENERGY.family, labels)
    status = (kube.peek(MODELSERVICES, NAME, NS) or {})["status"]
    assert energy is not None and energy > float(status["energyJoules"])  # ahead of status
