"""Per-model energy of a shared GPU, pure.

`split_energy` (what the operator uses, metrics/pooled.py): all of a pool pod's GPU energy over an
interval goes to its loaded models, the active part (above the idle power) by each model's busy time
(the sum of its request durations, the agent's per-model `greenserve_request_duration_seconds` sum) as
Kepler splits a time-sliced GPU's active power, the idle part by each model's GPU memory share (README,
"Shared GPU pools", says why). `split_active_energy` is Kepler's split alone: the idle energy, and
active energy without busy time, stay unattributed.
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


def split_energy(
    energy_j: float,
    idle_w: float,
    window_s: float,
    busy_s: Mapping[str, float],
    memory: Mapping[str, float],
) -> dict[str, float]:
    """All of one pool pod's GPU energy over a window, split between its loaded models (`memory`: each
    model's GPU memory need; the models of the split). The parts sum to `energy_j`:

    * the active part (above `idle_w` x `window_s`) by each model's share of the busy time, as
      `split_active_energy` and Kepler do;
    * the idle part (the GPU held with its CUDA context, whether anyone asks), and active energy no busy
      time explains, by each model's share of the GPU memory the pool reserves for it (equal shares
      without memory figures). A model on its own replica is charged all of its GPU's idle power; a
      pooled model is charged the part of the GPU it keeps, the quantity the pool packs by. Charging it
      none would show a move into the pool as a near-total energy cut, and the models' figures would
      no longer add up to what the GPUs drew (README, "Shared GPU pools")."""
    models = list(memory)
    if not models:
        return {}
    energy = max(0.0, energy_j)
    active = max(0.0, energy - max(0.0, idle_w) * max(0.0, window_s))
    busy = {m: max(0.0, busy_s.get(m, 0.0)) for m in models}
    total_busy = sum(busy.values())
    out = dict.fromkeys(models, 0.0)
    if total_busy > 0:
        for m in models:
            out[m] = active * busy[m] / total_busy
        rest = energy - active
    else:
        rest = energy
    weights = {m: max(0.0, memory[m]) for m in models}
    total_w = sum(weights.values())
    for m in models:
        out[m] += rest * (weights[m] / total_w if total_w > 0 else 1.0 / len(models))
    return out
