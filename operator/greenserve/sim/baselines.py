"""Baseline policies for the simulator, implemented from their documented defaults (not tuned to lose).

* `StaticPeak`: every model runs the replicas its peak needs (the peak of a 60 s mean rate at the same
  target utilization as HPA), all the time; no scaling, so no cold starts.
* `HpaLike`: Kubernetes HPA v2 on a requests-per-second-per-pod metric (target = capacity * 0.7, the
  common 60-70% practice), 10% tolerance, 15 s sync, scale-up limited to max(100%, 4 pods) per period,
  300 s scale-down stabilisation window (the default), minReplicas 1, default spreading placement
  (LeastAllocated) and the ReplicaSet's default victim order (nodes with more replicas of the set first).
* `KnativeLike`: KPA on concurrency in replica units (in-flight work = rate * service time), target 70%
  (container-concurrency-target-percentage), 60 s stable window, 6 s panic window, panic when the panic
  recommendation reaches 200% of Ready replicas (no scale-down while panicking, 60 s), scale-down at most
  halves (max-scale-down-rate 2), scale to zero after 30 s without traffic (scale-to-zero-grace-period),
  metrics straight from the queue proxy (no scrape lag), spreading placement.
* `oracle`: not a policy but a lower bound: at every step exactly the replicas that meet the SLO target
  for that step's arrivals (perfect knowledge, no cold starts), packed perfectly onto
  ceil(GPUs / GPUs per node) nodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from greenserve.policy.consolidation import Move
from greenserve.sim.engine import (
    ModelSpec,
    Replica,
    Result,
    SimConfig,
    View,
    replicas_for_attainment,
    serve_step,
)
from greenserve.sim.traces import FloatArray

METRICS_LAG_S = 15.0  # Prometheus scrape interval + rule evaluation: what HPA and greenserve see


class _NoConsolidation:
    def consolidate(self, now: float, view: View) -> tuple[Move, ...]:
        return ()

    def spare_gpus(self, now: float, view: View) -> int:
        return 0

    def scale_in_rank(self, view: View, replica: Replica, node_alloc: int, same_model_on_node: int) -> float:
        # ReplicaSet default: pods on nodes with more replicas of the same set go first.
        return -float(same_model_on_node)


def peak_replicas(rates: FloatArray, models: Sequence[ModelSpec], dt: float, target: float) -> list[int]:
    """Replicas for the peak 60 s mean rate of each model at `target` utilization."""
    win = max(1, round(60.0 / dt))
    out = []
    for m, spec in enumerate(models):
        r = rates[m]
        smoothed = np.convolve(r, np.ones(win) / win, mode="valid") if r.size >= win else r
        peak = float(smoothed.max()) if smoothed.size else 0.0
        out.append(max(1, math.ceil(peak / (spec.capacity_rps * target))))
    return out


class StaticPeak(_NoConsolidation):
    name = "static-peak"
    placement = "most"
    interval_s = 15.0

    def __init__(self, replicas: Sequence[int]) -> None:
        self.replicas = list(replicas)

    def desired(self, now: float, view: View) -> list[int]:
        return list(self.replicas)


class HpaLike(_NoConsolidation):
    name = "hpa-like"
    placement = "least"
    interval_s = 15.0

    def __init__(
        self,
        n_models: int,
        target: float = 0.7,
        stabilization_s: float = 300.0,
        tolerance: float = 0.1,
        min_replicas: int = 1,
        max_replicas: int = 1000,
        window_s: float = 30.0,
    ) -> None:
        self.target, self.stabilization_s, self.tolerance = target, stabilization_s, tolerance
        self.min_replicas, self.max_replicas, self.window_s = min_replicas, max_replicas, window_s
        self.history: list[list[tuple[float, int]]] = [[] for _ in range(n_models)]

    def desired(self, now: float, view: View) -> list[int]:
        out = []
        for m, spec in enumerate(view.models):
            current = view.current(m)
            rate = view.rate(m, self.window_s, METRICS_LAG_S)
            pods = max(1, current)
            ratio = rate / pods / (spec.capacity_rps * self.target)
            rec = current if abs(ratio - 1.0) <= self.tolerance else math.ceil(pods * ratio - 1e-9)
            rec = max(self.min_replicas, min(self.max_replicas, rec))
            hist = [(t, n) for t, n in self.history[m] if t > now - self.stabilization_s]
            hist.append((now, rec))
            self.history[m] = hist
            if rec > current:
                desired = min(rec, max(2 * current, current + 4))
            else:
                desired = min(current, max(n for _, n in hist))
            out.append(desired)
        return out


class KnativeLike(_NoConsolidation):
    name = "knative-like"
    placement = "least"
    interval_s = 5.0  # KPA ticks every 2 s; the simulator's step bounds it

    def __init__(
        self,
        n_models: int,
        target: float = 0.7,
        stable_s: float = 60.0,
        panic_s: float = 6.0,
        panic_threshold: float = 2.0,
        scale_to_zero_grace_s: float = 30.0,
        max_scale_down_rate: float = 2.0,
        max_replicas: int = 1000,
    ) -> None:
        self.target, self.stable_s, self.panic_s = target, stable_s, panic_s
        self.panic_threshold, self.grace_s = panic_threshold, scale_to_zero_grace_s
        self.max_down, self.max_replicas = max_scale_down_rate, max_replicas
        self.panic_until = [-math.inf] * n_models
        self.last_traffic = [0.0] * n_models

    def desired(self, now: float, view: View) -> list[int]:
        out = []
        for m, spec in enumerate(view.models):
            current, ready = view.current(m), view.ready(m)
            stable_rate = view.rate(m, self.stable_s)
            panic_rate = view.rate(m, max(self.panic_s, view.dt_s))
            if view.rate(m, view.dt_s) > 0:
                self.last_traffic[m] = now
            want_stable = math.ceil(stable_rate / spec.capacity_rps / self.target - 1e-9)
            want_panic = math.ceil(panic_rate / spec.capacity_rps / self.target - 1e-9)
            if ready > 0 and want_panic / ready >= self.panic_threshold:
                self.panic_until[m] = now + self.stable_s
            if current == 0 and panic_rate > 0:
                want = max(1, want_panic)  # the activator asks for a pod on the first request
            elif now < self.panic_until[m]:
                want = max(current, want_panic, want_stable)
            elif want_stable == 0:
                want = 0  # scale to zero is not rate limited, only delayed by the grace period below
            else:
                want = max(want_stable, math.ceil(ready / self.max_down))
            if want == 0 and now - self.last_traffic[m] < self.grace_s:
                want = max(1, current) if current > 0 else 0
            out.append(min(self.max_replicas, max(0, want)))
        return out


def oracle(
    arrivals: FloatArray,
    models: Sequence[ModelSpec],
    config: SimConfig,
    dt: float,
    trace_name: str,
    target: float = 0.995,
) -> Result:
    """Energy lower bound: exactly the replicas each step needs, on perfectly packed nodes."""
    cl = config.cluster
    gpu, base_w = cl.gpu, cl.node.base_w
    steps = arrivals.shape[1]
    res = Result("oracle", trace_name, steps * dt)
    sample = max(1, round(config.sample_every_s / dt))
    cache: dict[tuple[int, float], int] = {}
    for k in range(steps):
        gpus = 0
        replicas = 0
        busy_gpu_s = 0.0
        for m, spec in enumerate(models):
            a = float(arrivals[m, k])
            key = (m, a)
            c = cache.get(key)
            if c is None:
                c = replicas_for_attainment(a, spec, dt, target)
                cache[key] = c
            replicas += c
            gpus += c * spec.gpus
            res.requests += a
            if c > 0:
                within, served, _ = serve_step(a, 0.0, c, spec, dt)
                res.within_slo += within
                busy_gpu_s += served / spec.capacity_rps * spec.gpus
        nodes = math.ceil(gpus / cl.gpus_per_node)
        idle_w = gpu.loaded_idle_w * gpus + gpu.bare_w * (nodes * cl.gpus_per_node - gpus)
        busy_j = (gpu.busy_w - gpu.loaded_idle_w) * busy_gpu_s
        res.busy_gpu_j += busy_j
        res.idle_gpu_j += idle_w * dt
        res.node_base_j += base_w * nodes * dt
        res.gpu_seconds += gpus * dt
        res.node_seconds += nodes * dt
        if k % sample == 0:
            res.series_t.append(k * dt)
            res.series_replicas.append(replicas)
            res.series_nodes.append(nodes)
            res.series_power_w.append(idle_w + base_w * nodes + busy_j / dt)
    return res
