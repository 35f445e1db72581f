"""Fixtures shared by the reconcile unit tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from greenserve.cluster.cache import CACHE, ClusterCache
from greenserve.reconcile import autoscale, pools


@pytest.fixture
def fresh_cache() -> Iterator[ClusterCache]:
    """The process's watch-fed cache, empty and enabled for one test, then restored as it was."""
    saved = dataclasses.replace(CACHE)
    for f in dataclasses.fields(ClusterCache):
        setattr(CACHE, f.name, getattr(ClusterCache(), f.name))
    CACHE.enabled = True
    yield CACHE
    for f in dataclasses.fields(ClusterCache):
        setattr(CACHE, f.name, getattr(saved, f.name))


@pytest.fixture(autouse=True)
def fresh_rate_history(monkeypatch: pytest.MonkeyPatch) -> autoscale.RateHistory:
    """Each test its own autoscaler history: the process's keeps every ModelService's sized rate and rise
    headroom by namespace and name, which tests reuse."""
    history = autoscale.RateHistory()
    monkeypatch.setattr(autoscale, "HISTORY", history)
    return history


@pytest.fixture(autouse=True)
def fresh_pool_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own pool locks, last views and resync tasks: they are kept per pool key, which
    tests reuse, and a lock made in one test's event loop cannot be waited on in another's."""
    monkeypatch.setattr(pools, "_LOCKS", {})
    monkeypatch.setattr(pools, "_LAST", {})
    monkeypatch.setattr(pools, "_RESYNC", {})
