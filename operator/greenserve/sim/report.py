"""PNG plots of a benchmark trace: replicas, active nodes and (simulated) power over time, per policy."""

from __future__ import annotations

from pathlib import Path

from greenserve.sim.bench import TraceReport


def plot_report(report: TraceReport, out_dir: Path) -> Path:
    """Write `<out_dir>/<trace>.png` (matplotlib, Agg backend: no display needed) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    for r in report.results:
        hours = [t / 3600 for t in r.series_t]
        style = "--" if r.policy == "oracle" else "-"
        axes[0].plot(hours, r.series_replicas, style, label=r.policy, linewidth=1.0)
        axes[1].plot(hours, r.series_nodes, style, label=r.policy, linewidth=1.0)
        axes[2].plot(hours, [p / 1000 for p in r.series_power_w], style, label=r.policy, linewidth=1.0)
    axes[0].set_ylabel("replicas (GPUs)")
    axes[1].set_ylabel("active nodes")
    axes[2].set_ylabel("power, kW (simulated)")
    axes[2].set_xlabel("hours")
    axes[0].legend(loc="upper right", fontsize=8, ncol=3)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{report.trace}: simulated (power model from energy_anchors.md section 7)")
    fig.tight_layout()
    path = out_dir / f"{report.trace}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
