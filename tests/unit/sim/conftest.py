"""Shared fixtures of the simulator tests: a tiny deterministic cluster and a directory of Azure traces."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenserve.sim.engine import ClusterConfig, ModelSpec, SimConfig
from greenserve.sim.traces import AZURE_FILES, default_traces_dir


@pytest.fixture
def small_config() -> SimConfig:
    # 4-GPU nodes, fast provisioning and a short unneeded time keep the scenarios short.
    return SimConfig(cluster=ClusterConfig(gpus_per_node=4, provision_s=60.0, unneeded_s=120.0), seed=7)


@pytest.fixture
def model() -> ModelSpec:
    return ModelSpec("m", capacity_rps=100.0, cold_start_s=30.0, slo_ms=100.0)


@pytest.fixture
def traces_dir() -> Path:
    path = default_traces_dir()
    if not all((path / f).is_file() for f in AZURE_FILES.values()):
        pytest.skip(f"Azure traces not found in {path} (CI clones the repository with shared/ beside it)")
    return path
