"""Per-model metrics of the models in shared GPU pools, from the pool pods' per-model series.

A pool pod serves several models, so its pod-level series (power, the GPU energy counter) belong to
none of them alone. Its agent counts each model's requests and busy time (`greenserve_requests_total`
and the `greenserve_request_duration_seconds` sum, labelled by `model`; TF Serving's `request_count`
by `model_name`). Both metrics sources read those cumulative counters once per tick for every pool pod
(a fixed number of queries, or one scrape per pool pod, however many models share) and hand them to
one `PoolLedger`, which turns two successive readings of a pod into, per model:

* requests per second (the counter's increase over the interval between the readings);
* its part of the pod's GPU energy over that interval (policy/shared_energy.py `split_energy`: the
  active energy by busy-time share, the idle energy by GPU memory share), added to a per-(pod, model)
  counter kept here. That counter is what the ModelService's cumulative energy follows
  (metrics/carbon.py `accumulate_energy`, as a replica's own energy counter); it starts at 0 when the
  operator starts or the model is loaded on the pod, as an agent's counter starts with its pod;
* its power: that part over the interval.

The pod's idle power is estimated as the least power the pod has reported (Kepler estimates idle power
the same way). A pod without two readings yet, or whose newest reading is too old, gives no figure: the
reading is stale, and stale figures never move or scale anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from greenserve.metrics.types import PooledModel, ServiceMetrics, SourceKind
from greenserve.policy.energy import counter_delta
from greenserve.policy.shared_energy import split_energy

PodKey = tuple[str, str]  # (namespace, pod)


@dataclass(frozen=True)
class PoolPodSample:
    """One reading of one pool pod's cumulative counters."""

    at: float
    energy_j: float | None  # the GPU energy counter
    power_w: float | None
    gpus: int = 0
    simulated: bool | None = None
    # model -> requests counter; None when the pod has no request counter at all (not a zero: absent)
    requests: Mapping[str, float] | None = None
    busy_s: Mapping[str, float] = field(default_factory=dict)  # model -> summed request durations
    # Which counters those are ("tfs" or "agent"): TF Serving's, passed through by the agent, are absent
    # from a scrape whose read of the model server timed out; an interval that mixes kinds has no figure.
    requests_kind: str = ""
    busy_kind: str = ""


@dataclass
class _Interval:
    at: float  # end of the interval
    window_s: float
    requests: dict[str, float]
    energy_j: dict[str, float]


class PoolLedger:
    """See the module docstring. One per metrics source; in memory only."""

    def __init__(self, stale_after_s: float = 120.0) -> None:
        self.stale_after_s = stale_after_s
        self._last: dict[PodKey, PoolPodSample] = {}
        self._idle_w: dict[PodKey, float] = {}
        self._interval: dict[PodKey, _Interval] = {}
        self._energy: dict[PodKey, dict[str, float]] = {}  # attributed energy counters per model
        self._rates: dict[tuple[str, str], tuple[float, ...]] = {}  # (ns, ModelService), newest first

    def observe(self, namespace: str, pod: str, sample: PoolPodSample, members: Mapping[str, float]) -> None:
        """A new reading of a pool pod whose loaded models are `members` (model -> GPU memory need)."""
        key = (namespace, pod)
        if sample.power_w is not None and math.isfinite(sample.power_w):
            self._idle_w[key] = min(self._idle_w.get(key, sample.power_w), sample.power_w)
        prev = self._last.get(key)
        if prev is not None and sample.at <= prev.at:
            return  # the same sample again (Prometheus had no newer scrape): the last interval stands
        self._last[key] = sample
        counters = self._energy.setdefault(key, {})
        for gone in [m for m in counters if m not in members]:
            del counters[gone]  # unloaded: a later load starts its counter again from 0
        if prev is None or prev.energy_j is None or sample.energy_j is None:
            self._interval.pop(key, None)
            return
        window = sample.at - prev.at
        busy: dict[str, float] = {}
        if prev.busy_kind == sample.busy_kind:
            busy = {m: counter_delta(prev.busy_s.get(m, 0.0), sample.busy_s.get(m, 0.0)) for m in members}
        parts = split_energy(
            counter_delta(prev.energy_j, sample.energy_j), self._idle_w.get(key, 0.0), window, busy, members
        )
        for m, joules in parts.items():
            counters[m] = counters.get(m, 0.0) + joules
        requests: dict[str, float] = {}
        if sample.requests is not None and prev.requests_kind == sample.requests_kind:
            # A declared counter without this model's series yet: no request of it so far (a measured 0).
            before = prev.requests or {}
            requests = {m: counter_delta(before.get(m, 0.0), sample.requests.get(m, 0.0)) for m in members}
        self._interval[key] = _Interval(sample.at, window, requests, parts)

    def unreachable(self, namespace: str, pod: str) -> None:
        """The pod did not answer this time: no figure from it until it does (its counters are kept, so
        the next interval spans the gap)."""
        self._interval.pop((namespace, pod), None)

    def forget(self, keep: Iterable[PodKey], models: Iterable[tuple[str, str]]) -> None:
        """Drop the state of pool pods not in `keep` (gone) and the run of windows of ModelServices not in
        `models` (deleted, or no longer pooled), so neither grows without bound, and a ModelService made
        again under a deleted one's name does not inherit its windows."""
        alive = set(keep)
        for book in (self._last, self._idle_w, self._interval, self._energy):
            for gone in [k for k in book if k not in alive]:
                del book[gone]
        pooled = set(models)
        for gone_model in [k for k in self._rates if k not in pooled]:
            del self._rates[gone_model]

    def reading(
        self, namespace: str, name: str, pm: PooledModel, now: float, source: SourceKind
    ) -> ServiceMetrics:
        """The ModelService's figures from the pool pods (its part of each)."""
        missing: list[str] = []
        requests = power = 0.0
        have_requests = False
        windows: list[float] = []
        pod_energy: dict[str, float] = {}
        stamps: list[float] = []
        gpus = 0
        sims: set[bool] = set()
        for ref in pm.pods:
            key = (ref.namespace, ref.name)
            last, interval = self._last.get(key), self._interval.get(key)
            if last is None or interval is None:
                if ref.ready:
                    missing.append(f"pod:{ref.name}")
                continue
            stamps.append(last.at)
            gpus += last.gpus
            if last.simulated is not None:
                sims.add(last.simulated)
            windows.append(interval.window_s)
            power += interval.energy_j.get(pm.model, 0.0) / interval.window_s if interval.window_s else 0.0
            if pm.model in interval.requests:
                requests += interval.requests[pm.model]
                have_requests = True
            counter = self._energy.get(key, {}).get(pm.model)
            if counter is not None:
                pod_energy[ref.name] = counter
        window = sum(windows) / len(windows) if windows else 0.0
        rps = requests / window if have_requests and window > 0 else None
        if rps is None:
            missing.append("requests")
        if not windows:
            missing.extend(("power", "energy"))
        stamp = min(stamps) if stamps else None
        stale = (
            stamp is None or any(m.startswith("pod:") for m in missing) or now - stamp > self.stale_after_s
        )
        # By ModelService, not by its pool GPU: a move between pool GPUs keeps the run of windows (the
        # model's requests are read from every pod that serves it, on both GPUs during the move).
        rate_key = (namespace, name)
        history: tuple[float, ...] = ()
        if rps is not None and not stale:
            history = (rps, *self._rates.get(rate_key, ()))[:3]
            self._rates[rate_key] = history
        else:
            self._rates.pop(rate_key, None)  # a gap breaks the run of adjacent windows
        return ServiceMetrics(
            namespace=namespace,
            name=name,
            power_w=power if windows else None,
            energy_j=sum(pod_energy.values()) if pod_energy else None,
            energy_window_j=power * window if windows else None,
            requests_per_s=rps,
            joules_per_request=power * window / requests if windows and requests > 0 else None,
            rate_history=history,
            replicas_reporting=len(windows),
            gpus=gpus if windows else None,
            simulated=(True in sims) if sims else None,
            pod_energy_j=pod_energy,
            window_s=window,
            sampled_at=stamp,
            stale=stale,
            missing=tuple(missing),
            source=source,
        )


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None and b is None else (a or 0.0) + (b or 0.0)


def combine(own: ServiceMetrics, pooled: ServiceMetrics) -> ServiceMetrics:
    """A ModelService served by its own replicas and a pool at once (a move in flight): the sum of
    both. With no replica of its own reporting or expected, the pool's reading alone."""
    own_expected = own.replicas_reporting > 0 or any(m.startswith("pod:") for m in own.missing)
    if not own_expected:
        return pooled
    history: Sequence[float] = ()
    if own.rate_history and pooled.rate_history:
        n = min(len(own.rate_history), len(pooled.rate_history))
        history = [own.rate_history[i] + pooled.rate_history[i] for i in range(n)]
    requests = (
        None
        if own.requests_per_s is None or pooled.requests_per_s is None
        else own.requests_per_s + pooled.requests_per_s
    )
    return replace(
        own,
        power_w=None if own.power_w is None or pooled.power_w is None else own.power_w + pooled.power_w,
        energy_j=_add(own.energy_j, pooled.energy_j),
        energy_window_j=_add(own.energy_window_j, pooled.energy_window_j),
        requests_per_s=requests,
        joules_per_request=None,
        rate_history=tuple(history) if requests is not None else (),
        replicas_reporting=own.replicas_reporting + pooled.replicas_reporting,
        gpus=None if own.gpus is None and pooled.gpus is None else (own.gpus or 0) + (pooled.gpus or 0),
        pod_energy_j={**own.pod_energy_j, **pooled.pod_energy_j},
        sampled_at=min((s for s in (own.sampled_at, pooled.sampled_at) if s is not None), default=None),
        stale=own.stale or pooled.stale,
        missing=(*own.missing, *pooled.missing),
    )
