from __future__ import annotations

import datetime as dt

from greenserve.api import conditions as cond

U = cond.ConditionUpdate

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def test_transition_time_changes_only_with_status() -> None:
    first = cond.set_condition([], U(cond.READY, False, "Progressing", "0/1"), 1, now=T0)
    same = cond.set_condition(first, U(cond.READY, False, "Progressing", "still 0/1"), 2, now=T1)
    flipped = cond.set_condition(same, U(cond.READY, True, "ReplicasAvailable", "1/1"), 2, now=T1)
    ready = cond.get_condition(same, cond.READY)
    assert ready is not None and ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert ready["message"] == "still 0/1" and ready["observedGeneration"] == 2
    flipped_ready = cond.get_condition(flipped, cond.READY)
    assert flipped_ready is not None and flipped_ready["lastTransitionTime"] == "2026-01-01T00:05:00Z"


def test_other_conditions_are_kept_and_sorted() -> None:
    conds = cond.set_condition([], U(cond.SCALING, True, "ScaleUp"), 1, now=T0)
    conds = cond.set_condition(conds, U(cond.READY, True, "ReplicasAvailable"), 1, now=T0)
    assert [c["type"] for c in conds] == [cond.READY, cond.SCALING]


def test_same_condition_ignores_time() -> None:
    a = cond.set_condition([], U(cond.READY, True, "R", "m"), 1, now=T0)[0]
    b = cond.set_condition([], U(cond.READY, True, "R", "m"), 1, now=T1)[0]
    c = cond.set_condition([], U(cond.READY, True, "R", "other"), 1, now=T1)[0]
    assert cond.same_condition(a, b)
    assert not cond.same_condition(a, c)
    assert not cond.same_condition(a, None)


def test_unknown_status_is_kept_as_unknown() -> None:
    (c,) = cond.set_condition([], U(cond.READY, "Unknown", "RollingOut", "old spec serves"), 3, now=T0)
    assert c["status"] == "Unknown" and c["observedGeneration"] == 3
