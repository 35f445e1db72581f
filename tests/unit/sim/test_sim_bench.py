from __future__ import annotations

from pathlib import Path

import pytest

from greenserve.sim import cli
from greenserve.sim.bench import default_config, format_report, run_scenario, scenarios, verdict


def test_quick_bench_runs_every_policy_and_writes_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(
        ["bench", "--quick", "--scenario", "bursty-2h", "--out", str(tmp_path), "--mean-gpus", "12"]
    )
    assert rc == 0
    out = capsys.readouterr().out
    for name in ("oracle", "static-peak", "hpa-like", "knative-like", "greenserve", "SIMULATED"):
        assert name in out
    png = tmp_path / "bursty-2h.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_traces_are_skipped_with_a_reason(tmp_path: Path) -> None:
    found, notes = scenarios(tmp_path, quick=True, seed=1, dt_s=5.0, mean_gpus=8.0, only=["azure-code"])
    assert found == [] and "not found" in notes[0]


def test_bad_arguments_exit_2() -> None:
    assert cli.main(["bench", "--scenario", "nope"]) == 2


def test_report_ratios_and_verdict(traces_dir: Path) -> None:
    found, _ = scenarios(traces_dir, quick=True, seed=1, dt_s=5.0, mean_gpus=16.0, only=["azure-conv"])
    report = run_scenario(found[0], default_config(1), ["oracle", "hpa-like", "greenserve"])
    table = format_report(report)
    assert "azure-conv" in table and table.count("\n") == 4
    v = verdict(report)
    assert v is not None
    ora, hpa, gs = (report.by_name(n) for n in ("oracle", "hpa-like", "greenserve"))
    assert ora and hpa and gs
    assert v.vs_oracle == pytest.approx(gs.total_j / ora.total_j) and v.vs_oracle >= 1.0
    assert v.saving_vs_hpa == pytest.approx(1 - gs.total_j / hpa.total_j)
