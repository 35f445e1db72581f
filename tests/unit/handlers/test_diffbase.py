"""kopf's diff base in memory (handlers/diffbase.py): a handled creation or spec change writes nothing to
the ModelService itself (issue 15: kopf's PATCH of its annotation was a third of the operator's requests
at a change of 1,000 ModelServices, and the slowest)."""

from __future__ import annotations

import json

import kopf
import pytest
from prometheus_client import CollectorRegistry

from greenserve.api import constants as c
from greenserve.handlers import startup
from greenserve.handlers.diffbase import DIFFBASE, MemoryDiffBaseStorage, UnmarkedProgressStorage
from greenserve.metrics.operator_metrics import OperatorMetrics


def body(uid: str = "u1", spec: dict[str, object] | None = None, **annotations: str) -> kopf.Body:
    meta = {"name": "svc", "namespace": "ml", "uid": uid, "annotations": annotations}
    return kopf.Body({"apiVersion": "greenserve.io/v1alpha1", "kind": "ModelService", "metadata": meta,
                      "spec": spec or {"scaling": {"maxReplicas": 4}}})  # fmt: skip


async def test_the_operator_keeps_kopfs_diff_base_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    async def nothing(memo: object) -> None:
        return None

    for module in (startup.leader, startup.ticker, startup.consolidation):
        monkeypatch.setattr(module, "start", nothing)
    monkeypatch.setattr(startup, "_operator_metrics", lambda _: OperatorMetrics(CollectorRegistry()))
    settings = kopf.OperatorSettings()
    memo = kopf.Memo()
    await startup.configure(settings=settings, memo=memo)
    await memo["kube"].close()
    assert settings.persistence.diffbase_storage is DIFFBASE
    assert isinstance(settings.persistence.progress_storage, UnmarkedProgressStorage)


def test_storing_the_handled_essence_patches_nothing() -> None:
    storage = MemoryDiffBaseStorage()
    b = body()
    assert storage.fetch(body=b) is None  # first sight (also after a restart): a creation for kopf
    patch = kopf.Patch()
    essence = storage.build(body=b)
    storage.store(body=b, patch=patch, essence=essence)
    assert not patch  # nothing for kopf to send
    assert storage.fetch(body=b) == essence
    # A spec change is a diff against what was handled.
    changed = body(spec={"scaling": {"maxReplicas": 5}})
    assert storage.build(body=changed) != storage.fetch(body=changed)
    storage.forget("u1")  # the ModelService was deleted
    assert storage.fetch(body=b) is None and len(storage) == 0


def test_an_older_versions_diff_base_annotation_is_not_a_change() -> None:
    storage = MemoryDiffBaseStorage()
    legacy = {f"{c.GROUP}/last-handled-configuration": json.dumps({"spec": {}})}
    b = body(**legacy)
    assert storage.build(body=b) == storage.build(body=body())


def test_a_handler_that_succeeds_at_once_leaves_no_progress_to_write() -> None:
    """kopf stores a handler's progress and purges it in the same patch: nothing is left, not even
    kopf's marker of our annotation prefix."""
    storage = UnmarkedProgressStorage()
    b = body()
    patch = kopf.Patch()
    handler = kopf.HandlerId("reconcile_modelservice")
    storage.store(key=handler, record={"started": "2026-12-02T00:00:00", "retries": 1}, body=b, patch=patch)
    assert patch  # the progress itself is stored as kopf stores it (a retry keeps it)
    storage.purge(key=handler, body=b, patch=patch)
    assert not patch
