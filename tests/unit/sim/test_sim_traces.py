from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from greenserve.sim.traces import AZURE_FILES, azure_trace, bursty_trace, diurnal_trace, load_azure_timestamps

CAPS = (100.0, 50.0, 20.0)


def test_synthetic_traces_are_deterministic_per_seed_and_scaled_to_the_mean_demand() -> None:
    a = diurnal_trace(capacity_rps=CAPS, mean_gpus=12.0, dt_s=10.0, seed=3, hours=6.0)
    b = diurnal_trace(capacity_rps=CAPS, mean_gpus=12.0, dt_s=10.0, seed=3, hours=6.0)
    c = diurnal_trace(capacity_rps=CAPS, mean_gpus=12.0, dt_s=10.0, seed=4, hours=6.0)
    assert np.array_equal(a.intensity, b.intensity)
    assert not np.array_equal(a.intensity, c.intensity)
    assert a.intensity.shape == (3, 6 * 360)
    demand = float(np.sum(a.rates().mean(axis=1) / np.asarray(CAPS)))
    assert demand == pytest.approx(12.0)
    assert (a.intensity >= 0).all()
    # The sparse long-tail model is silent most of the time.
    assert (a.intensity[-1] == 0).mean() > 0.3


def test_diurnal_day_has_a_peak_and_a_trough() -> None:
    d = diurnal_trace(capacity_rps=CAPS, mean_gpus=20.0, dt_s=60.0, seed=1, sparse_last=False)
    hourly = d.rates()[0].reshape(24, 60).mean(axis=1)
    assert hourly.max() > 3 * hourly.min()


def test_bursty_trace_has_bursts() -> None:
    t = bursty_trace(capacity_rps=CAPS, mean_gpus=10.0, dt_s=5.0, seed=2, hours=2.0)
    r = t.rates()[0]
    assert r.max() >= 3 * np.median(r)


def test_azure_trace_is_split_and_scaled(traces_dir: Path) -> None:
    path = traces_dir / AZURE_FILES["conv"]
    times = load_azure_timestamps(path)
    assert times[0] == 0 and (np.diff(times) >= 0).all() and 3000 < times[-1] < 4000  # about one hour
    t = azure_trace(path, shares=(0.7, 0.2, 0.1), capacity_rps=CAPS, mean_gpus=16.0, dt_s=5.0, seed=1)
    assert t.n_models == 3 and t.duration_s == pytest.approx(times[-1], abs=120)
    assert float(np.sum(t.rates().mean(axis=1) / np.asarray(CAPS))) == pytest.approx(16.0)
    share = t.intensity.sum(axis=1) / t.intensity.sum()
    assert share[0] > share[1] > share[2]
    again = azure_trace(path, shares=(0.7, 0.2, 0.1), capacity_rps=CAPS, mean_gpus=16.0, dt_s=5.0, seed=1)
    assert np.array_equal(t.intensity, again.intensity)
