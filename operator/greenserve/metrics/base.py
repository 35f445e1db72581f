"""The one interface the operator reads metrics through."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from greenserve.metrics.types import PodRef, PooledModel, ServiceMetrics


@runtime_checkable
class MetricsSource(Protocol):
    async def service_metrics(
        self, namespace: str, name: str, pods: Sequence[PodRef] | None = None
    ) -> ServiceMetrics:
        """Power, energy and traffic of one ModelService; ``pods`` narrows (or, for scraping, defines) the
        replicas. Never raises for missing data: it comes back as None fields, ``stale`` and ``missing``."""
        ...

    async def fleet_metrics(
        self, services: Mapping[tuple[str, str], Sequence[PodRef]]
    ) -> dict[tuple[str, str], ServiceMetrics]:
        """`service_metrics` of every (namespace, name) at once, with a number of requests to the
        backend that does not grow with the number of ModelServices where the backend allows it."""
        ...

    async def pooled_metrics(
        self, models: Mapping[tuple[str, str], PooledModel]
    ) -> dict[tuple[str, str], ServiceMetrics]:
        """The part of its shared pool's pods of every pooled model (metrics/pooled.py), with a number
        of requests to the backend that does not grow with the number of ModelServices."""
        ...

    async def rate_history(
        self, services: Mapping[tuple[str, str], str | None], until: float, span_s: float
    ) -> dict[tuple[str, str], list[tuple[float, float]]]:
        """Each ModelService's request rate per metrics window over `span_s` before `until`, oldest first,
        as (window end, requests/s); `services` gives each one's model name in a shared pool (None: not
        pooled). What a restarted operator's rise history is refilled from (reconcile/ticker.py); empty
        for a source that keeps no history."""
        ...

    async def close(self) -> None: ...
