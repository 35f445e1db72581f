"""User-facing output and docs state figures, not the project's internal acceptance verdicts."""

from __future__ import annotations

import re

import pytest

from greenserve.simulator import report
from greenserve.simulator.bound import EnergyBound
from greenserve.simulator.engine import Result
from support.paths import REPO

# Verdict vocabulary of internal targets ("target <= -35%: MISSED", "35% IMPOSSIBLE", "(target ...: ok)").
VERDICT = re.compile(
    r"MISSED|IMPOSSIBLE|target\s*[<>]=|:\s*ok\)|acceptance target|the issue.s|original goal", re.IGNORECASE
)

USER_DOCS = [
    "README.md",
    "charts/greenserve/README.md",
    "charts/greenserve/templates/NOTES.txt",
    "operator/greenserve/simulator/data/README.md",
    "operator/greenserve/simulator/BENCHMARK_HISTORY.md",
]


@pytest.mark.parametrize("doc", USER_DOCS)
def test_docs_carry_no_acceptance_verdicts(doc: str) -> None:
    hits = VERDICT.findall((REPO / doc).read_text())
    assert hits == []


def _result(policy: str, joules: float, within: float) -> Result:
    return Result(policy, "t", 3600.0, busy_gpu_j=joules, requests=1000.0, within_slo=within)


def test_bench_summary_states_figures_without_verdicts() -> None:
    # Figures a verdict would have judged "MISSED": a 10% saving, SLO under HPA-like's, 1.5x the oracle.
    results = {
        "t": [
            _result("greenserve", 9.0e6, 990.0),
            _result("hpa", 1.0e7, 995.0),
            _result("oracle", 6.0e6, 999.0),
        ]
    }
    out = report.acceptance(results, bounds={"t": EnergyBound(0.995, 5.0e6, 4.0e6)})
    assert VERDICT.findall(out) == []
    assert "-10.0% vs HPA-like" in out and "1.50x the oracle's energy" in out
    assert "at most 50.0% less than HPA-like" in out
