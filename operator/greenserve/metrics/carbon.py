"""Energy bookkeeping and emissions: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping

from greenserve.policy.energy import counter_delta, grams_co2e

__all__ = ["accumulate_energy", "grams_co2e"]


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
    added = sum(counter_delta(last.get(pod), value) for pod, value in current.items())
    return total_j + added, dict(current)
