"""The benchmark table and the plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from greenserve.policy.energy import joules_to_kwh
from greenserve.simulator.bound import EnergyBound
from greenserve.simulator.engine import ATTAINMENT_TARGET, Result

HEADER = (
    f"{'trace':<14}{'policy':<12}{'kWh':>8}{'busyGPU':>9}{'idleGPU':>9}{'base':>8}{'GPU-h':>8}{'node-h':>8}"
    f"{'SLO%':>8}{'cold':>6}{'moves':>6}{'E/orc':>7}{'GPUh/o':>7}{'nodeh/o':>8}{'E/hpa':>7}"
)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def table(results: Mapping[str, Sequence[Result]]) -> str:
    lines = [
        "Energy is SIMULATED (power model of policy/energy.py), not measured.",
        HEADER,
    ]
    for trace, rs in results.items():
        oracle = next((r for r in rs if r.policy == "oracle"), None)
        hpa = next((r for r in rs if r.policy == "hpa"), None)
        for r in rs:
            lines.append(
                f"{trace:<14}{r.policy:<12}{joules_to_kwh(r.total_j):>8.2f}{joules_to_kwh(r.busy_gpu_j):>9.2f}"
                f"{joules_to_kwh(r.idle_gpu_j):>9.2f}{joules_to_kwh(r.base_j):>8.2f}{r.gpu_hours:>8.1f}"
                f"{r.node_hours:>8.1f}{100 * r.slo_attainment:>8.3f}{r.cold_starts:>6}{r.moves:>6}"
                f"{_ratio(r.total_j, oracle.total_j) if oracle else '-':>7}"
                f"{_ratio(r.gpu_hours, oracle.gpu_hours) if oracle else '-':>7}"
                f"{_ratio(r.node_hours, oracle.node_hours) if oracle else '-':>8}"
                f"{_ratio(r.total_j, hpa.total_j) if hpa else '-':>7}"
            )
    return "\n".join(lines)


def acceptance(
    results: Mapping[str, Sequence[Result]],
    slo: float = ATTAINMENT_TARGET,
    bounds: Mapping[str, EnergyBound] | None = None,
) -> str:
    """Per trace, greenserve against HPA-like and the oracle: energy saving, SLO attainment, energy
    relative to the oracle and the oracle's own saving; with `bounds`, the most any policy can save at
    that SLO (bound.py), which tells how much of a gap is left to any policy at all. Plain figures, no
    pass/fail verdicts: the output is for users comparing policies on their own traces."""
    lines = []
    for trace, rs in results.items():
        by = {r.policy: r for r in rs}
        g, h, o = by.get("greenserve"), by.get("hpa"), by.get("oracle")
        if g is None or h is None or o is None:
            continue
        lines.append(
            f"{trace}: greenserve energy {-100 * (1.0 - g.total_j / h.total_j):+.1f}% vs HPA-like; "
            f"requests within the SLO {100 * g.slo_attainment:.3f}% "
            f"(HPA-like {100 * h.slo_attainment:.3f}%, objective {100 * slo:.1f}%); "
            f"{g.total_j / o.total_j:.2f}x the oracle's energy; "
            f"oracle {-100 * (1.0 - o.total_j / h.total_j):+.1f}% vs HPA-like"
        )
        b = (bounds or {}).get(trace)
        if b is not None:
            best = 1.0 - b.total_j / h.total_j
            lines.append(
                f"  lower bound for any policy at SLO >= {100 * b.attainment:.3f}%: {b.kwh:.2f} kWh, "
                f"at most {100 * best:.1f}% less than HPA-like; "
                f"greenserve {g.total_j / b.total_j:.2f}x the bound"
            )
    return "\n".join(lines)


def plot(results: Mapping[str, Sequence[Result]], out: Path) -> list[Path]:
    """One PNG per trace: replicas, active nodes and power over time, a line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for trace, rs in results.items():
        fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
        for r in rs:
            hours = r.t / 3600.0
            axes[0].plot(hours, r.replicas, label=r.policy, lw=1)
            axes[1].plot(hours, r.nodes, label=r.policy, lw=1)
            axes[2].plot(hours, r.power_w / 1000.0, label=r.policy, lw=1)
        axes[0].set_ylabel("replicas")
        axes[1].set_ylabel("active nodes")
        axes[2].set_ylabel("power (kW, simulated)")
        axes[2].set_xlabel("hours")
        axes[0].legend(loc="upper left", ncol=5, fontsize=8)
        axes[0].set_title(f"{trace}: replicas, nodes and power per policy (SIMULATED energy)")
        fig.tight_layout()
        path = out / f"{trace}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
