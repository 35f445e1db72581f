"""Command line of the simulator: `greenserve simulate ...` and `greenserve bench ...`.

`main(argv)` takes the subcommand as argv[0] ("simulate" or "bench"); the operator's CLI forwards to it.

* `bench [--quick] [--traces DIR] [--out DIR] [--seed N] [--seeds K] [--scenario NAME ...]`: every policy
  on every scenario; prints the tables, the acceptance verdicts (and with --seeds K a min/mean/max summary
  over K seeds) and writes one PNG per scenario (first seed) to --out.
* `simulate --scenario NAME [--policy NAME ...] [--quick] ...`: the same for one scenario and chosen
  policies (default: all).

Exit status: 0, or 2 on bad arguments. (`bench --strict` exits 1 when an acceptance target is missed.)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from greenserve.sim.bench import (
    ALL_POLICIES,
    Verdict,
    default_config,
    format_report,
    run_scenario,
    scenarios,
    verdict,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="greenserve", description="greenserve simulator (energy is simulated)")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, helptext in (
        ("bench", "benchmark greenserve against the baselines on every scenario"),
        ("simulate", "run chosen policies on one scenario"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument(
            "--traces", type=Path, default=None, help="Azure trace dir (default ../shared/data/traces)"
        )
        s.add_argument("--out", type=Path, default=Path("sim-out"), help="directory for the PNG plots")
        s.add_argument("--seed", type=int, default=1)
        s.add_argument("--seeds", type=int, default=1, help="run seeds seed..seed+N-1 and summarise")
        s.add_argument("--dt", type=float, default=5.0, help="time step, seconds")
        s.add_argument("--mean-gpus", type=float, default=32.0, help="mean demand per scenario, GPUs")
        s.add_argument("--quick", action="store_true", help="short scenarios (CI)")
        s.add_argument("--no-plots", action="store_true")
        s.add_argument(
            "--scenario",
            action="append",
            default=None,
            choices=["azure-code", "azure-conv", "diurnal-24h", "bursty-2h"],
        )
        s.add_argument("--policy", action="append", default=None, choices=list(ALL_POLICIES))
        s.add_argument("--strict", action="store_true", help="exit 1 if an acceptance target is missed")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.cmd == "simulate" and not args.scenario:
        args.scenario = ["diurnal-24h"]
    policies = args.policy or list(ALL_POLICIES)
    if "oracle" not in policies:
        policies = ["oracle", *policies]  # ratios need it
    started = time.monotonic()
    missed = False
    verdicts: dict[str, list[Verdict]] = {}
    for seed in range(args.seed, args.seed + max(1, args.seeds)):
        found, notes = scenarios(
            args.traces,
            quick=args.quick,
            seed=seed,
            dt_s=args.dt,
            mean_gpus=args.mean_gpus,
            only=args.scenario or (),
        )
        if seed == args.seed:
            for note in notes:
                print(note)
        config = default_config(seed)
        for sc in found:
            report = run_scenario(sc, config, policies)
            print(f"[seed {seed}] " + format_report(report))
            v = verdict(report)
            if v is not None:
                print(v.line())
                verdicts.setdefault(sc.trace.name, []).append(v)
                missed |= sc.trace.name != "bursty-2h" and not v.ok
            if not args.no_plots and seed == args.seed:
                from greenserve.sim.report import plot_report

                print(f"plot: {plot_report(report, args.out)}")
            print()
    if args.seeds > 1:
        print(
            f"== greenserve vs HPA-like, seeds {args.seed}..{args.seed + args.seeds - 1} (min / mean / max)"
        )
        for name, vs in verdicts.items():
            print(f"{name:<13} " + "  ".join(_spread(label, [f(v) for v in vs]) for label, f in _COLUMNS))
    print(f"done in {time.monotonic() - started:.1f} s")
    return 1 if (args.strict and missed) else 0


_COLUMNS: list[tuple[str, Callable[[Verdict], float]]] = [
    ("saving %", lambda v: 100 * v.saving_vs_hpa),
    ("SLO %", lambda v: 100 * v.attainment),
    ("HPA SLO %", lambda v: 100 * v.hpa_attainment),
    ("x oracle", lambda v: v.vs_oracle),
]


def _spread(label: str, xs: list[float]) -> str:
    return f"{label} {min(xs):.2f}/{sum(xs) / len(xs):.2f}/{max(xs):.2f}"
