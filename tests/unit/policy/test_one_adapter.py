"""One adapter: the operator and the simulator give the policy the same inputs for the same ModelService.

The simulator describes its model as a ModelService (`Greenserve.spec_for`); that spec and the reading
the simulator took go through the operator's path as reconcile builds them (`autoscale.policy_inputs`
with the spec, the replica counts in status and a `ServiceMetrics`, the model's rate history in the
operator's `RateHistory` and a fleet book of its own), and must give exactly the simulator's inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from greenserve.api.v1alpha1 import ScalingSpec
from greenserve.config import OperatorConfig
from greenserve.manifests.profile import service_profile
from greenserve.metrics.types import ServiceMetrics
from greenserve.policy import profile
from greenserve.policy.autoscaling import ScalingInputs
from greenserve.reconcile import autoscale, pools
from greenserve.simulator.engine import ModelSpec, Scenario, Simulation
from greenserve.simulator.policies import Greenserve
from greenserve.simulator.traces import Trace

WINDOW_S = 30.0


def _scenario() -> Scenario:
    # Two hours of a noisy ramp with a burst at the end: a trend, a queue and a rise to learn.
    rng = np.random.default_rng(7)
    steps = 240
    base = np.linspace(4.0, 30.0, steps) + rng.normal(0.0, 1.0, steps)
    base[-6:] *= 2.5
    rates = np.clip(base, 0.0, None)[None, :]
    model = ModelSpec("chat", capacity_rps=10.0, cold_start_s=45.0, slo_ms=500.0)
    return Scenario(Trace("ramp", WINDOW_S, rates), (model,), metrics_window_s=WINDOW_S)


def _operator_inputs(
    policy: Greenserve, sim: Simulation, history: autoscale.RateHistory | None = None
) -> ScalingInputs:
    reading = policy.reading(sim, 0)
    assert reading is not None
    metrics = ServiceMetrics(
        namespace="sim",
        name="chat",
        requests_per_s=reading.rate,
        inflight_requests=reading.inflight,
        rate_history=reading.rate_history,
        gpu_utilization=reading.utilization,
        sampled_at=reading.sampled_at,
        window_s=reading.window_s,
        stale=False,
    )
    # The operator learned the same hour of rates, one reading per window (the newest is recorded by
    # policy_inputs itself).
    history = autoscale.RateHistory() if history is None else history
    for i in reversed(range(1, round(policy.rise_history_s / WINDOW_S))):
        history.record(
            ("sim", "chat"), sim.now - i * WINDOW_S, sim.observed_rate(0, WINDOW_S, i * WINDOW_S), WINDOW_S
        )
    status = {"desiredReplicas": len(sim.logical(0)), "readyReplicas": sim.ready_count(0)}
    return autoscale.policy_inputs(
        policy.spec_for(sim, 0),
        status,
        metrics,
        sim.now,
        OperatorConfig(),
        fleet_book=autoscale.FleetBook(),
        history=history,
    )


@pytest.mark.parametrize("attainment", [0.995, 0.99], ids=["Balanced", "PowerSaving"])
def test_the_operator_and_the_simulator_give_the_policy_the_same_inputs(attainment: float) -> None:
    policy = Greenserve(slo_attainment=attainment, known_cold_start=False)
    sim = Simulation(_scenario())
    sim.run(policy)
    simulated = policy.inputs_now(sim, 0)
    assert _operator_inputs(policy, sim) == simulated
    # Every part of the mapping was exercised: a queue, a trend, the rise headroom and the fleet's share.
    assert simulated.queued_requests is not None and simulated.request_rate_trend is not None
    reading = policy.reading(sim, 0)
    assert reading is not None and reading.rate is not None
    sized, _ = profile.sizing_rate(policy.profile_for(sim, 0), reading)
    assert sized is not None and simulated.request_rate is not None and simulated.request_rate > sized
    assert simulated.slo_attainment is not None and not math.isclose(simulated.slo_attainment, attainment)
    # The rise headroom the pool placement gives the model (reconcile/pools.py reads it back from the
    # history) is the simulator's too (simulator/sharing.py), and the headroom was there to learn.
    history = autoscale.RateHistory()
    _operator_inputs(policy, sim, history)
    assert history.factor(("sim", "chat")) == policy._rise_factor(0) > 1.0
    assert history.factor(("sim", "other")) == 1.0
    # And the load it places the model by: the rate the autoscaler sized for, not the window's mean.
    assert history.sized_rate(("sim", "chat")) == sized != reading.rate
    assert history.sized_rate(("sim", "other")) is None
    spec, gpu_gib = policy.spec_for(sim, 0), 24.0
    spec = spec.model_copy(update={"gpu": spec.gpu.model_copy(update={"memory": "2Gi"})})
    demand = pools.demand_of(
        "chat",
        spec,
        {"requestsPerSecond": reading.rate},
        int(gpu_gib * 2**30),
        history.factor(("sim", "chat")),
        history.sized_rate(("sim", "chat")),
    )
    simulated_demand = profile.sharing_demand(
        service_profile(spec),
        "chat",
        sized,
        memory_gib=2.0,
        gpu_memory_gib=gpu_gib,
        rise_factor=policy._rise_factor(0),
    )
    assert demand is not None and demand.load == pytest.approx(simulated_demand.load)
    assert demand.rise == pytest.approx(simulated_demand.rise) and demand.rise > 0.0


def test_the_spec_target_is_met_at_the_named_utilisation() -> None:
    # scaling.target requests/s per replica at UTILISATION_AT_TARGET: the service rate is target / 0.8,
    # and the fixed-target demand is the rate over the target.
    policy = Greenserve(known_cold_start=False)
    sim = Simulation(_scenario())
    spec = policy.spec_for(sim, 0)
    p = service_profile(spec)
    assert spec.scaling.target == pytest.approx(8.0)
    assert p.service_rate_rps == pytest.approx(10.0) == sim.models[0].capacity_rps
    assert p.target_utilization == profile.UTILISATION_AT_TARGET == 0.8


def test_the_crd_documents_the_utilisation_at_target() -> None:
    description = ScalingSpec.model_fields["target"].description or ""
    assert f"target / {profile.UTILISATION_AT_TARGET:g}" in description
    assert f"{profile.UTILISATION_AT_TARGET:.0%} busy" in description
