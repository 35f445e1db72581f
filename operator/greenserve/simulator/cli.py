"""`greenserve simulate|bench`: main(argv) with the subcommand as argv[0]."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from greenserve.simulator import bench as bench_mod
from greenserve.simulator import matrix, report, traces
from greenserve.simulator.traces import default_traces_dir


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--traces",
        type=Path,
        default=None,
        help="directory of the Azure CSVs, plain or .csv.gz (default: greenserve/simulator/data, shipped)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, default=0.7, help="target utilization of every dynamic policy")
    p.add_argument(
        "--unneeded-s", type=float, default=600.0, help="node autoscaler: empty time before removal"
    )
    p.add_argument("--provision-s", type=float, default=120.0, help="node autoscaler: node start-up time")
    p.add_argument(
        "--cold-start-s",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(30.0, 120.0),
        help="model load times, spread over the models (default 30 120)",
    )
    p.add_argument(
        "--drain-below",
        type=float,
        default=0.0,
        help="also drain nodes below this GPU allocation (CA's utilization threshold, e.g. 0.5); "
        "0 = empty nodes only",
    )
    p.add_argument("--out", type=Path, default=None, help="write PNG plots here")
    p.add_argument("--quick", action="store_true", help="short traces, coarse steps (CI)")


def _config(args: argparse.Namespace) -> bench_mod.BenchConfig:
    lo, hi = args.cold_start_s
    if not 0 <= lo <= hi:
        raise SystemExit("error: --cold-start-s needs 0 <= MIN <= MAX")
    cfg = bench_mod.BenchConfig(
        seed=args.seed, target_utilization=args.target, cold_start_min_s=lo, cold_start_max_s=hi
    )
    return replace(
        cfg,
        cluster=replace(
            cfg.cluster,
            unneeded_s=args.unneeded_s,
            provision_s=args.provision_s,
            drain_below_utilization=args.drain_below,
        ),
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="greenserve", description="simulate and benchmark scaling policies")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sim = sub.add_parser("simulate", help="one policy on one trace")
    sim.add_argument("--policy", default="greenserve", choices=bench_mod.POLICY_NAMES)
    sim.add_argument("--trace", default="diurnal", help="azure-code, azure-conv, diurnal, bursty, azure-*-1h")
    _common(sim)
    b = sub.add_parser(
        "bench",
        help="every policy at matched SLO attainment over the scenario matrix; with --trace, every policy "
        "at its default setting on those traces",
    )
    b.add_argument(
        "--trace",
        action="append",
        default=None,
        help="repeatable: azure-code, azure-conv, diurnal, bursty, azure-*-1h (default: the matrix)",
    )
    b.add_argument(
        "--scenario",
        action="append",
        default=None,
        metavar="SHAPE/SERVICE/FLEET",
        help="repeatable: run only these matrix scenarios (e.g. azure-conv/100ms/8; any shape of "
        f"{', '.join(matrix.SHAPES)}, service of {', '.join(matrix.SERVICE_CLASSES)}, fleet size)",
    )
    b.add_argument(
        "--workers", type=int, default=2, help="matrix: processes (at most 2; 1 runs in this process)"
    )
    b.add_argument(
        "--stress", action="store_true", help="also the Azure traces at their native 1 h time scale"
    )
    b.add_argument(
        "--reuse-runs",
        type=Path,
        default=None,
        metavar="MATRIX_JSON",
        help="matrix: take the policies' runs from a saved matrix.json (same seed and --quick) and "
        "compute only the bounds",
    )
    _common(b)
    args = parser.parse_args(argv)
    cfg = _config(args)
    traces_dir = args.traces or default_traces_dir()
    start = time.perf_counter()
    if args.cmd == "bench" and not args.trace and not args.stress:
        return _matrix(args, traces_dir)
    try:
        if args.cmd == "simulate":
            scenario = bench_mod.make_scenario(args.trace, cfg, traces_dir, quick=args.quick)
            results = {args.trace: [bench_mod.run_policy(args.policy, scenario, cfg)]}
        else:
            names = list(args.trace or bench_mod.TRACES) + (
                list(bench_mod.STRESS_TRACES) if args.stress else []
            )
            results = bench_mod.bench(names, cfg, traces_dir, quick=args.quick)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.table(results))
    if args.cmd == "bench":
        print()
        print(report.acceptance(results, bounds=bench_mod.bounds(results, cfg, traces_dir, quick=args.quick)))
    print(
        f"\nmodel: {cfg.n_models} models, 1 GPU/replica, {cfg.capacity_rps:g} req/s per replica, "
        f"p95 SLO {cfg.slo_ms:g} ms, cold start {cfg.cold_start_min_s:g}-{cfg.cold_start_max_s:g} s; "
        f"nodes {cfg.cluster.gpus_per_node}x "
        f"{cfg.cluster.gpu_product} + {cfg.cluster.base_w:g} W base, "
        f"provisioning {cfg.cluster.provision_s:g} s, "
        f"empty-node removal after {cfg.cluster.unneeded_s:g} s"
        + (
            f", drain below {cfg.cluster.drain_below_utilization:g}"
            if cfg.cluster.drain_below_utilization
            else ""
        )
        + f"; target utilization {cfg.target_utilization:g}"
    )
    if args.out is not None:
        for path in report.plot(results, args.out):
            print(f"wrote {path}")
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0


def _matrix(args: argparse.Namespace, traces_dir: Path) -> int:
    """`greenserve bench`: the matched-SLO benchmark over the scenario matrix (simulator/matrix.py)."""
    base = matrix.MatrixConfig.quick() if args.quick else matrix.MatrixConfig()
    cfg = replace(base, seed=args.seed, workers=max(1, min(2, args.workers)), traces_dir=traces_dir)
    try:
        keys = (
            [matrix.ScenarioKey.parse(name) for name in args.scenario]
            if args.scenario
            else matrix.scenarios(quick=args.quick)
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not all(traces.resolve_trace_file(traces_dir / f).is_file() for f in traces.AZURE_FILES.values()):
        keys = [k for k in keys if k.shape not in traces.AZURE_FILES]
        print(f"(Azure traces not found in {traces_dir}: their scenarios are left out)")
    try:
        if args.reuse_runs is not None:
            saved = matrix.load(args.reuse_runs)
            names = {k.name for k in keys} if args.scenario else {k.name for k in saved.keys}
            keys = [k for k in saved.keys if k.name in names]
            points = [p for p in saved.points if p.scenario in names]
            workers = max(1, min(cfg.workers, 2))
            result = matrix.with_bounds(points, keys, cfg, time.perf_counter(), workers)
            print(f"runs from {args.reuse_runs} ({len(points)}); bounds computed at this revision")
        else:
            result = matrix.run_matrix(keys, cfg, quick=args.quick, progress=print)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(matrix.table(result))
    print()
    print(matrix.summary(result))
    print()
    print(matrix.sharing_table(result))
    print(matrix.sharing_summary(result))
    print(
        f"\nscenarios: {cfg.hours:g} h measured after {cfg.warmup_h:g} h warm-up, {cfg.step_s:g} s steps, "
        f"seed {cfg.seed}; services "
        + ", ".join(
            f"{c.name} (SLO {1000 * c.slo_s:g} ms, cold start {c.cold_start_s:g} s)"
            for c in matrix.SERVICE_CLASSES.values()
        )
        + "; 8x L4 nodes + 300 W base, 120 s provisioning, 600 s empty-node removal"
    )
    if args.out is not None:
        for path in matrix.plot(result, args.out):
            print(f"wrote {path}")
        md = args.out / "matrix.md"
        md.write_text(matrix.markdown(result) + "\n")
        (args.out / "matrix-sharing.md").write_text(matrix.sharing_markdown(result) + "\n")
        matrix.save(result, args.out / "matrix.json")
        print(f"wrote {md} and {args.out / 'matrix.json'}")
    print(f"({result.wall_s:.1f} s, {len(result.points)} runs)")
    return 0
