"""The one interface the operator reads metrics through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from greenserve.metrics.types import PodRef, ServiceMetrics


@runtime_checkable
class MetricsSource(Protocol):
    async def service_metrics(
        self, namespace: str, name: str, pods: Sequence[PodRef] | None = None
    ) -> ServiceMetrics:
        """Power, energy and traffic of one ModelService; ``pods`` narrows (or, for scraping, defines) the
        replicas. Never raises for missing data: it comes back as None fields, ``stale`` and ``missing``."""
        ...

    async def close(self) -> None: ...
