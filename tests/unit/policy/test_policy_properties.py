"""Property tests of the policy: the invariants the operator and the simulator rely on."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from greenserve.policy import autoscaling as pa
from greenserve.policy import energy, queueing
from greenserve.policy.consolidation import (
    MAX_DELETION_COST,
    ClusterSnapshot,
    ConsolidationLimits,
    Move,
    NodeView,
    ReplicaView,
    apply_moves,
    batch,
    deletion_costs,
    plan,
)

NOW = 50_000.0
UNLIMITED = ConsolidationLimits(max_moves=1000, min_interval_s=0)


# --- consolidation ---------------------------------------------------------------------------------


@st.composite
def clusters(draw: st.DrawFn) -> ClusterSnapshot:
    """Random clusters: nodes of 4 or 8 GPUs, some protected or draining, replicas of 1-2 GPUs of three
    services, some not Ready or protected (warming up / do-not-disrupt)."""
    n_nodes = draw(st.integers(1, 7))
    nodes: list[NodeView] = []
    replicas: list[ReplicaView] = []
    for i in range(n_nodes):
        cap = draw(st.sampled_from([4, 8]))
        used = 0
        for j in range(draw(st.integers(0, 5))):
            g = draw(st.integers(1, 2))
            if used + g > cap:
                break
            used += g
            replicas.append(
                ReplicaView(
                    f"n{i}-r{j}",
                    f"ns/svc{draw(st.integers(0, 2))}",
                    f"n{i}",
                    g,
                    ready=draw(st.booleans()) or draw(st.booleans()),  # mostly Ready
                    protected=draw(st.integers(0, 5)) == 0,
                )
            )
        nodes.append(
            NodeView(
                f"n{i}",
                cap,
                used + draw(st.integers(0, max(0, cap - used)) if draw(st.booleans()) else st.just(0)),
                protected=draw(st.integers(0, 4)) == 0,
                draining=draw(st.integers(0, 6)) == 0,
            )
        )
    return ClusterSnapshot(tuple(nodes), tuple(replicas))


def _ready_per_service(snap: ClusterSnapshot) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in snap.replicas:
        if r.ready:
            out[r.service] = out.get(r.service, 0) + r.gpus
    return out


def _execute_start_before_stop(
    snap: ClusterSnapshot, moves: tuple[Move, ...]
) -> tuple[list[dict[str, int]], list[str]]:
    """Execute `moves` as the operator does, one at a time: the replacement starts on the target node while
    the source still runs (it needs room there now), and only once it is Ready is the source retired.
    Returns the Ready GPUs per service after every half-step, and the moves whose replacement had no room
    (in the cluster it would stay Pending and the move would time out)."""
    cap = {n.name: n.gpu_capacity for n in snap.nodes}
    alloc = {n.name: n.gpu_allocated for n in snap.nodes}
    ready = dict(_ready_per_service(snap))
    trace = [dict(ready)]
    no_room: list[str] = []
    for m in moves:
        if alloc[m.to_node] + m.gpus > cap[m.to_node]:
            no_room.append(m.pod)
            trace += [dict(ready), dict(ready)]
            continue
        alloc[m.to_node] += m.gpus
        ready[m.service] = ready.get(m.service, 0) + m.gpus  # replacement Ready
        trace.append(dict(ready))
        alloc[m.from_node] -= m.gpus
        ready[m.service] -= m.gpus  # source retired
        trace.append(dict(ready))
    return trace, no_room


@settings(max_examples=200, deadline=None)
@given(clusters(), st.integers(1, 6), st.integers(0, 4))
def test_every_move_fits_and_never_drops_ready_capacity(
    snap: ClusterSnapshot, budget: int, spare: int
) -> None:
    # What is Ready now is at least demand + headroom (the autoscaler guarantees that much); executing the
    # plan make-before-break must never go below it, which needs every replacement to find room on its
    # target while its source still runs, and never moves a replica that is not Ready.
    required = _ready_per_service(snap)
    p = plan(snap, NOW, ConsolidationLimits(max_moves=budget, min_interval_s=0, headroom_gpus=spare))
    trace, no_room = _execute_start_before_stop(snap, p.moves)
    assert no_room == []
    by_pod = {r.pod: r for r in snap.replicas}
    assert all(by_pod[m.pod].ready for m in p.moves)
    for ready in trace:
        for svc, need in required.items():
            assert ready.get(svc, 0) >= need


@settings(max_examples=200, deadline=None)
@given(clusters())
def test_plan_never_touches_protected_or_draining_and_never_overfills(snap: ClusterSnapshot) -> None:
    p = plan(snap, NOW, UNLIMITED)
    nodes = {n.name: n for n in snap.nodes}
    by_pod = {r.pod: r for r in snap.replicas}
    for m in p.moves:
        src = by_pod[m.pod]
        assert not src.protected and src.ready  # protected or warming replicas never move
        assert m.from_node == src.node and m.gpus == src.gpus and m.service == src.service
        for name in (m.from_node, m.to_node):
            assert not nodes[name].protected and not nodes[name].draining
    assert not set(p.emptied_nodes) & {n.name for n in snap.nodes if n.protected or n.draining}
    after = apply_moves(snap, p.moves)
    for n in after.nodes:
        assert n.gpu_allocated <= n.gpu_capacity

    # Replica count per service is unchanged: a plan never pushes a service above its maxReplicas.
    def count(s: ClusterSnapshot) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in s.replicas:
            out[r.service] = out.get(r.service, 0) + 1
        return out

    assert count(after) == count(snap)


@settings(max_examples=200, deadline=None)
@given(clusters())
def test_plan_is_idempotent_and_deterministic(snap: ClusterSnapshot) -> None:
    first = plan(snap, NOW, UNLIMITED)
    assert first == plan(snap, NOW, UNLIMITED)
    after = apply_moves(snap, first.moves)
    again = plan(after, NOW, UNLIMITED)
    assert again.moves == ()
    # Applying an empty plan changes nothing, so planning is a fixed point from there on.
    assert apply_moves(after, again.moves) == after


@settings(max_examples=200, deadline=None)
@given(clusters())
def test_a_pass_moves_one_node_at_a_time_one_replica_per_service(snap: ClusterSnapshot) -> None:
    p = plan(snap, NOW, UNLIMITED)
    together = batch(p.moves)
    if not p.moves:
        assert together == ()
        return
    first = p.moves[0].from_node
    # Every move off the plan's first node, of as many services as it has there; nothing else.
    assert together[0] == p.moves[0] and set(together) <= set(p.moves)
    assert {m.from_node for m in together} == {first}
    assert len({m.service for m in together}) == len(together)
    assert {m.service for m in together} == {m.service for m in p.moves if m.from_node == first}
    # Started together they still fit: no target gets more GPUs than the plan found free for it.
    after = apply_moves(snap, together)
    assert all(n.gpu_allocated <= n.gpu_capacity for n in after.nodes if n.name != first)
    # The node empties unless a service had two replicas there; the rest is the next plan's.
    on_first = [r for r in snap.replicas if r.node == first]
    if len({r.service for r in on_first}) == len(on_first):
        assert not [r for r in after.replicas if r.node == first]


@settings(max_examples=100, deadline=None)
@given(clusters(), st.integers(0, 5), st.floats(0, 300), st.floats(0, 300))
def test_rate_limit_is_respected(snap: ClusterSnapshot, budget: int, interval: float, since: float) -> None:
    limits = ConsolidationLimits(max_moves=budget, min_interval_s=interval, last_move_at=NOW - since)
    p = plan(snap, NOW, limits)
    assert len(p.moves) <= budget
    if since < interval:
        assert p.moves == ()


@settings(max_examples=100, deadline=None)
@given(clusters(), st.integers(0, 16))
def test_headroom_is_kept_outside_emptied_nodes(snap: ClusterSnapshot, headroom: int) -> None:
    p = plan(snap, NOW, ConsolidationLimits(max_moves=1000, min_interval_s=0, headroom_gpus=headroom))
    if not p.emptied_nodes:
        return
    after = apply_moves(snap, p.moves)
    free = sum(
        max(0, n.gpu_capacity - n.gpu_allocated)
        for n in after.nodes
        if n.name not in p.emptied_nodes and not n.draining  # do-not-disrupt nodes still take new pods
    )
    assert free >= headroom


@settings(max_examples=100, deadline=None)
@given(clusters())
def test_deletion_costs_are_bounded_and_favour_the_least_allocated_nodes(snap: ClusterSnapshot) -> None:
    costs = deletion_costs(snap)
    assert set(costs) == {r.pod for r in snap.replicas}
    assert all(abs(v) <= MAX_DELETION_COST < 1e8 for v in costs.values())
    alloc = {n.name: max(n.gpu_allocated, 0) for n in snap.nodes}
    for r in snap.replicas:
        alloc[r.node] = max(alloc[r.node], sum(x.gpus for x in snap.replicas if x.node == r.node))
    for a in snap.replicas:
        for b in snap.replicas:
            if alloc[a.node] < alloc[b.node]:
                assert costs[a.pod] <= costs[b.pod]


def test_a_replica_without_room_elsewhere_keeps_its_node() -> None:
    nodes = (NodeView("a", 8, 2), NodeView("b", 8, 7))
    replicas = (ReplicaView("p", "ns/s", "a", 2), ReplicaView("q", "ns/t", "b", 7))
    assert plan(ClusterSnapshot(nodes, replicas), NOW, UNLIMITED).moves == ()
    # One more free GPU on b and the move becomes possible.
    roomy = ClusterSnapshot(
        (NodeView("a", 8, 2), NodeView("b", 8, 6)), (replicas[0], replace(replicas[1], gpus=6))
    )
    assert [m.pod for m in plan(roomy, NOW, UNLIMITED).moves] == ["p"]


# --- autoscaling -----------------------------------------------------------------------------------


def inputs(**kw: object) -> pa.ScalingInputs:
    base = pa.ScalingInputs(
        current_replicas=4,
        ready_replicas=4,
        min_replicas=1,
        max_replicas=20,
        target_utilization=0.75,
        capacity_rps=100.0,
        request_rate=300.0,
        gpu_utilization=None,
        sampled_at=NOW - 15,
        slo_p95_ms=100.0,
        service_time_ms=10.0,
        scale_down_delay_s=300.0,
        cold_start_s=45.0,
        idle_power_w=15.0,
        cold_start_energy_j=1350.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 30),
    st.integers(0, 5),
    st.integers(0, 25),
    st.one_of(st.none(), st.floats(0, 5000)),
    st.one_of(st.none(), st.floats(-50, 50)),
    st.lists(st.floats(0, 5000), max_size=6),
)
def test_decisions_stay_within_bounds(
    current: int, lo: int, span: int, rate: float | None, trend: float | None, history: list[float]
) -> None:
    hi = max(lo + span, 1)
    state = pa.ScalerState()
    t = NOW - 10 * len(history)
    for h in history:  # any earlier history
        state = pa.decide(inputs(request_rate=h, sampled_at=t - 5), state, t).state
        t += 10
    i = inputs(
        current_replicas=current,
        ready_replicas=current,
        min_replicas=lo,
        max_replicas=hi,
        request_rate=rate,
        request_rate_trend=trend,
    )
    d = pa.decide(i, state, NOW)
    if d.reason in (pa.HOLD_MISSING, pa.HOLD_STALE):
        assert d.desired_replicas == current
    else:
        assert d.desired_replicas <= hi  # never above maxReplicas, even with history from a higher max
        if d.desired_replicas < current:
            assert d.desired_replicas >= lo
    json.dumps(d.state.to_dict())  # storable in the CR status


@settings(max_examples=100, deadline=None)
@given(st.floats(1, 2000), st.floats(0.01, 20))
def test_rising_trend_scales_up_no_less_and_falling_trend_is_ignored(rate: float, slope: float) -> None:
    flat = pa.decide(inputs(request_rate=rate, current_replicas=1, ready_replicas=1), pa.ScalerState(), NOW)
    up = pa.decide(
        inputs(request_rate=rate, request_rate_trend=slope, current_replicas=1, ready_replicas=1),
        pa.ScalerState(),
        NOW,
    )
    down = pa.decide(
        inputs(request_rate=rate, request_rate_trend=-slope, current_replicas=1, ready_replicas=1),
        pa.ScalerState(),
        NOW,
    )
    assert up.desired_replicas >= flat.desired_replicas
    assert down.desired_replicas == flat.desired_replicas
    # The projection is capped: never more than (1 + trend_max_boost) x the observed rate's demand.
    capped = pa.decide(
        inputs(
            request_rate=rate, request_rate_trend=1e6, current_replicas=1, ready_replicas=1, max_replicas=1000
        ),
        pa.ScalerState(),
        NOW,
    )
    boosted = pa.decide(
        inputs(request_rate=rate * 1.5, current_replicas=1, ready_replicas=1, max_replicas=1000),
        pa.ScalerState(),
        NOW,
    )
    assert capped.desired_replicas == boosted.desired_replicas


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    high = pa.decide(inputs(request_rate=900.0), pa.ScalerState(), NOW)
    assert high.desired_replicas == 12 and high.reason == pa.SCALE_UP
    state = high.state
    for dt in (15.0, 150.0, 290.0):
        d = pa.decide(
            inputs(current_replicas=12, ready_replicas=12, request_rate=150.0, sampled_at=NOW + dt - 15),
            state,
            NOW + dt,
        )
        assert d.desired_replicas == 12 and d.reason == pa.STABILIZING
        state = d.state
    later = pa.decide(
        inputs(current_replicas=12, ready_replicas=12, request_rate=150.0, sampled_at=NOW + 300),
        state,
        NOW + 315,
    )
    assert later.desired_replicas < 12 and later.reason == pa.SCALE_DOWN
    # Round trip through the JSON the operator stores, mid-window: the same decision follows.
    restored = pa.ScalerState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert (
        pa.decide(
            inputs(current_replicas=12, ready_replicas=12, request_rate=150.0, sampled_at=NOW + 300),
            restored,
            NOW + 315,
        )
        == later
    )


def test_slo_guard_adds_replicas_when_the_target_alone_misses_the_slo() -> None:
    # 1 replica at 75% is enough by utilization, but not for a p95 of 12 ms with 10 ms service time.
    d = pa.decide(
        inputs(request_rate=70.0, current_replicas=1, ready_replicas=1, slo_p95_ms=12.0),
        pa.ScalerState(),
        NOW,
    )
    assert d.desired_replicas > 1 and d.reason == pa.SLO_GUARD
    assert queueing.p95_response_s(70.0, 100.0, d.desired_replicas) <= 0.012


# --- energy and queueing ---------------------------------------------------------------------------


@given(st.sampled_from(sorted(energy.GPU_MODELS)), st.floats(0, 1), st.floats(0, 1))
def test_power_is_monotone_in_utilization_and_residency(product: str, a: float, b: float) -> None:
    g = energy.GPU_MODELS[product]
    lo, hi = sorted((a, b))
    assert g.bare_w <= g.power_w(0.0) <= g.power_w(lo) <= g.power_w(hi) <= g.busy_w <= g.tdp_w


@given(st.lists(st.floats(0, 1e9), min_size=2, max_size=20))
def test_counter_deltas_are_never_negative_and_sum_up_without_resets(readings: list[float]) -> None:
    deltas = [energy.counter_delta(p, c) for p, c in itertools.pairwise(readings)]
    assert all(d >= 0 for d in deltas)
    monotone = sorted(readings)
    total = sum(energy.counter_delta(p, c) for p, c in itertools.pairwise(monotone))
    assert abs(total - (monotone[-1] - monotone[0])) <= 1e-6 * max(1.0, monotone[-1])


@settings(max_examples=100, deadline=None)
@given(st.floats(1, 3000), st.floats(5, 500), st.floats(0.005, 2.0))
def test_replicas_for_slo_is_minimal(rate: float, mu: float, slo: float) -> None:
    c = queueing.replicas_for_slo(rate, mu, slo, limit=2000)
    if c < 2000:
        assert queueing.p95_response_s(rate, mu, c) <= slo
        if c > max(1, int(rate / mu) + 1):
            assert queueing.p95_response_s(rate, mu, c - 1) > slo


# --- trend and spare slots -------------------------------------------------------------------------


@given(st.lists(st.floats(0, 1e4), min_size=2, max_size=6), st.floats(1, 120))
def test_sustained_trend_counts_only_a_rise_in_every_window(rates: list[float], window: float) -> None:
    trend = pa.sustained_trend(rates, window)
    rises = [(a - b) / window for a, b in itertools.pairwise(rates)]
    if all(r > 0 for r in rises):
        assert trend == min(rises)
    else:
        assert trend == 0.0


def test_sustained_trend_ignores_oscillation() -> None:
    assert pa.sustained_trend([300.0, 200.0, 100.0], 30.0) == 100.0 / 30.0
    assert pa.sustained_trend([300.0, 100.0, 200.0], 30.0) == 0.0
    assert pa.sustained_trend([100.0, 200.0, 300.0], 30.0) == 0.0


def test_a_lowered_max_replicas_applies_despite_the_stabilisation_window() -> None:
    state = pa.ScalerState(recommendations=((NOW - 10, 15),))
    d = pa.decide(inputs(current_replicas=10, ready_replicas=10, max_replicas=5), state, NOW)
    assert d.desired_replicas == 5


def test_a_node_kept_by_other_pods_gpus_is_not_a_source() -> None:
    # n5 runs someone else's 1-GPU pod besides our replica: moving ours would not empty it.
    nodes = (NodeView("n5", 4, 2), NodeView("n6", 8, 3))
    replicas = (ReplicaView("ours", "ns/s", "n5", 1), ReplicaView("big", "ns/t", "n6", 3))
    assert plan(ClusterSnapshot(nodes, replicas), NOW, UNLIMITED).moves == ()
