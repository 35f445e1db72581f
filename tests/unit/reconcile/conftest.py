"""Fixtures shared by the reconcile unit tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from greenserve.cluster.cache import CACHE, ClusterCache


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
