"""Per-model energy of a shared GPU: Kepler's split of a time-sliced GPU's active power, pure.

Over one window, a pool pod's GPU energy above its idle power (the active energy) goes to its models in
proportion to each model's busy time there (the sum of its request durations, the agent's per-model
`greenserve_request_duration_seconds` sum); the idle energy is not attributed to any model, as Kepler
keeps it in `kepler_node_gpu_idle_watts`. Without busy time the active energy stays unattributed too:
nothing is invented (README, "Shared GPU pools").
"""

from __future__ import annotations

from collections.abc import Mapping


def split_active_energy(
    energy_j: float, idle_w: float, window_s: float, busy_s: Mapping[str, float]
) -> dict[str, float]:
    """Joules per model for one pod and window; the parts sum to the active energy (or to 0)."""
    active = max(0.0, energy_j - max(0.0, idle_w) * max(0.0, window_s))
    busy = {model: max(0.0, s) for model, s in busy_s.items()}
    total = sum(busy.values())
    if total <= 0 or active <= 0:
        return dict.fromkeys(busy, 0.0)
    return {model: active * s / total for model, s in busy.items()}
