"""Kepler-style split of a shared GPU's active energy by each model's busy time (policy/shared_energy.py)."""

from __future__ import annotations

import pytest

from greenserve.policy.shared_energy import split_active_energy


def test_active_energy_is_split_by_busy_time_and_idle_stays_unattributed() -> None:
    # 60 s at 100 W idle = 6 kJ idle; 9 kJ measured: 3 kJ active, busy 3:1.
    out = split_active_energy(9000.0, 100.0, 60.0, {"a": 3.0, "b": 1.0, "c": 0.0})
    assert out == pytest.approx({"a": 2250.0, "b": 750.0, "c": 0.0})
    assert sum(out.values()) == pytest.approx(3000.0)


def test_nothing_is_invented() -> None:
    assert split_active_energy(5000.0, 100.0, 60.0, {"a": 2.0}) == {"a": 0.0}  # below idle
    assert split_active_energy(9000.0, 100.0, 60.0, {"a": 0.0, "b": 0.0}) == {"a": 0.0, "b": 0.0}
    assert split_active_energy(9000.0, 100.0, 60.0, {}) == {}


def test_all_of_a_pods_energy_is_split_active_by_busy_time_idle_by_memory() -> None:
    from greenserve.policy.shared_energy import split_energy

    # 9 kJ over 60 s at 100 W idle: 3 kJ active by busy time 3:1:0, 6 kJ idle by memory 2:1:1.
    out = split_energy(9000.0, 100.0, 60.0, {"a": 3.0, "b": 1.0}, {"a": 2.0, "b": 1.0, "c": 1.0})
    assert out == pytest.approx({"a": 2250.0 + 3000.0, "b": 750.0 + 1500.0, "c": 1500.0})
    assert sum(out.values()) == pytest.approx(9000.0)  # nothing lost, nothing invented
    # No busy time: the whole energy by memory; no memory figures: equal shares; no model: nothing.
    assert split_energy(900.0, 10.0, 60.0, {}, {"a": 1.0, "b": 2.0}) == pytest.approx(
        {"a": 300.0, "b": 600.0}
    )
    assert split_energy(900.0, 10.0, 60.0, {}, {"a": 0.0, "b": 0.0}) == pytest.approx(
        {"a": 450.0, "b": 450.0}
    )
    assert split_energy(900.0, 10.0, 60.0, {"x": 5.0}, {}) == {}
    # Busy time of a model not loaded (left the pool) takes no part.
    assert split_energy(900.0, 10.0, 60.0, {"x": 5.0}, {"a": 1.0}) == pytest.approx({"a": 900.0})
