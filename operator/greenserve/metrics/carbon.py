"""Energy bookkeeping and emissions: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping

JOULES_PER_KWH = 3.6e6


def grams_co2e(joules: float, intensity_g_per_kwh: float) -> float:
    """Operational emissions of ``joules`` at a grid intensity in gCO2e/kWh."""
    return joules / JOULES_PER_KWH * intensity_g_per_kwh


def accumulate_energy(
    total_j: float, last: Mapping[str, float], current: Mapping[str, float]
) -> tuple[float, dict[str, float]]:
    """Add the energy the replicas used since the previous reading to a running total.

    ``last``/``current`` map a replica (pod name) to its energy counter in joules. A replica not seen
    before contributes its whole counter (the agent's counter starts with the pod); a counter below its
    previous value has been reset and contributes its new value. Replicas that disappeared contribute
    nothing more, so the total never decreases when replicas move. Returns the new total and the
    readings to pass as ``last`` next time.
    """
    added = 0.0
    for pod, value in current.items():
        prev = last.get(pod)
        if prev is None or value < prev:
            added += value
        else:
            added += value - prev
    return total_j + added, dict(current)
