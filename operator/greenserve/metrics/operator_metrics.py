"""The operator's own Prometheus metrics, one series per ModelService (names in greenserve.contract).

A value the operator does not know (missing or stale input) removes the series instead of exporting 0, so
dashboards show a gap, not a false "zero watts".
"""

from __future__ import annotations

import contextlib
from typing import Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from greenserve import contract as k
from greenserve.metrics.types import ServiceMetrics


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        labels = (k.LABEL_NAMESPACE, k.LABEL_MODELSERVICE)

        def gauge(spec: k.MetricSpec) -> Gauge:
            return Gauge(spec.family, spec.help, labels, registry=registry)

        self.power = gauge(k.OP_POWER)
        self.energy = gauge(k.OP_ENERGY)
        self.rps = gauge(k.OP_RPS)
        self.jpr = gauge(k.OP_JPR)
        self.co2 = gauge(k.OP_CO2)
        self.replicas_desired = gauge(k.OP_REPLICAS_DESIRED)
        self.replicas_ready = gauge(k.OP_REPLICAS_READY)
        self.stale = gauge(k.OP_METRICS_STALE)
        self.scale_decisions = Counter(
            k.OP_SCALE_DECISIONS.family,
            k.OP_SCALE_DECISIONS.help,
            k.OP_SCALE_DECISIONS.labels,
            registry=registry,
        )
        self.moves = Counter(k.OP_MOVES.family, k.OP_MOVES.help, k.OP_MOVES.labels, registry=registry)
        # Lets a test (or an alert) wait for "N more passes" instead of sleeping for a guessed time.
        self.passes = Counter(k.OP_PASSES.family, k.OP_PASSES.help, k.OP_PASSES.labels, registry=registry)
        self._gauges = (
            self.power, self.energy, self.rps, self.jpr, self.co2,
            self.replicas_desired, self.replicas_ready, self.stale,
        )  # fmt: skip

    @staticmethod
    def _set(gauge: Gauge, namespace: str, name: str, value: float | None) -> None:
        if value is None:
            with contextlib.suppress(KeyError):  # never exported for this ModelService
                gauge.remove(namespace, name)
        else:
            gauge.labels(namespace, name).set(value)

    def update(
        self,
        metrics: ServiceMetrics,
        *,
        energy_total_j: float | None = None,
        grams_co2e: float | None = None,
        replicas_desired: int | None = None,
        replicas_ready: int | None = None,
    ) -> None:
        """Export one ModelService's figures. ``energy_total_j``/``grams_co2e`` are the cumulative values
        written to status (see :func:`greenserve.metrics.carbon.accumulate_energy`); when omitted, the
        sources' ``energy_j`` is used for energy and no CO2 series is exported."""
        ns, name = metrics.namespace, metrics.name
        self._set(self.power, ns, name, metrics.power_w)
        self._set(self.energy, ns, name, energy_total_j if energy_total_j is not None else metrics.energy_j)
        self._set(self.rps, ns, name, metrics.requests_per_s)
        self._set(self.jpr, ns, name, metrics.joules_per_request)
        self._set(self.co2, ns, name, grams_co2e)
        self._set(self.replicas_desired, ns, name, replicas_desired)
        self._set(self.replicas_ready, ns, name, replicas_ready)
        self._set(self.stale, ns, name, 1.0 if metrics.stale or metrics.missing else 0.0)

    def record_scale(self, namespace: str, name: str, before: int, after: int) -> None:
        if after != before:
            direction: Literal["up", "down"] = "up" if after > before else "down"
            self.scale_decisions.labels(namespace, name, direction).inc()

    def record_pass(self, loop: Literal["resync", "consolidation"]) -> None:
        self.passes.labels(loop).inc()

    def record_move(self, namespace: str, name: str, reason: str = "consolidation") -> None:
        self.moves.labels(namespace, name, reason).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted ModelService."""
        for gauge in self._gauges:
            self._set(gauge, namespace, name, None)
        for counter in (self.scale_decisions, self.moves):
            for labels in [key for key in _label_sets(counter) if key[:2] == (namespace, name)]:
                counter.remove(*labels)


def _label_sets(metric: Counter) -> list[tuple[str, ...]]:
    # prometheus_client keeps children in `_metrics`; there is no public listing API.
    return [tuple(key) for key in metric._metrics]
