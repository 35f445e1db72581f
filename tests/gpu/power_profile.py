"""Measure a real GPU's power in the three states of ``greenserve.policy.energy`` and under sharing.

Run on a GPU machine (it needs PyTorch with CUDA for the load and ``nvidia-ml-py`` for the readings)::

    PYTHONPATH=operator:serving-image python3 tests/gpu/power_profile.py --out power_profile.json

It reads the GPU only through the agent's own path (``PynvmlPort`` + ``GpuSampler``), and changes no setting
(no power limit, clock, MIG or persistence change): the load comes from worker processes that hold CUDA
contexts and run matrix products on a duty cycle. Each state's mean power is the NVML energy counter's
increase over the measuring window divided by its length, not a mean of instantaneous readings.

States, in order:

* ``bare``: no process on the GPU (P_bare), measured first and again last (drift check);
* ``ctx1``/``ctx2``: one or two processes that hold a context and 1 GiB each and do nothing (P_ctx, and
  whether a second context adds a second parking tax, which a pool with one process per GPU avoids);
* ``heavy@a``: one process issuing bf16 8192^3 products for a share ``a`` of each 100 ms period (power
  against NVML utilization, the model's linear middle state, and its peak);
* ``membound``/``light``: a bandwidth-bound copy and a small product, both back to back: the same 100%
  utilization at far lower power, the model's known blind spot;
* ``shared nx a``: n processes at a share ``a`` each, the same products: do utilizations add, and how much
  slower does each one's work finish once their sum nears 1 (the simulator's sharing assumptions).

A measurement script, not a test: it asserts nothing and prints a table and a JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

PERIOD_S = 0.1
SETTLE_S = 2.0


def _worker(mode: str, duty: float, seconds: float, t_op: float | None, aligned: bool) -> None:
    """One process holding a context and 1 GiB. ``kind*n``: n models in this one process (a pool server's
    shape), each its own thread and CUDA stream with its own operands, each at ``duty``."""
    import threading

    import torch  # only the worker needs it; the sampler must not hold a CUDA context itself

    kind, _, count = mode.partition("*")
    dev = torch.device("cuda")
    hold = torch.empty(1 << 30, dtype=torch.uint8, device=dev)  # a resident "model" of 1 GiB

    def make_op() -> Any:
        if kind == "heavy":
            a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=dev)
            b = torch.randn(8192, 8192, dtype=torch.bfloat16, device=dev)
            return lambda: torch.mm(a, b)
        if kind == "membound":
            x = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
            y = torch.empty_like(x)
            return lambda: y.copy_(x)
        if kind == "light":
            s = torch.randn(256, 256, device=dev)
            return lambda: torch.mm(s, s)
        return None

    ops_of = [make_op() for _ in range(int(count or 1))]
    op = ops_of[0]
    torch.cuda.synchronize()
    if op is not None and t_op is None:
        for _ in range(10):
            op()
        torch.cuda.synchronize()
        n = 200 if kind == "light" else 40
        t = time.perf_counter()
        for _ in range(n):
            op()
        torch.cuda.synchronize()
        t_op = (time.perf_counter() - t) / n
    ops = 0 if op is None or t_op is None else max(1, round(duty * PERIOD_S / t_op))
    print(json.dumps({"ready": True, "t_op_s": t_op, "ops_per_period": ops}), flush=True)
    busy: list[float] = []
    end = time.perf_counter() + seconds

    def run(fn: Any) -> None:
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            while time.perf_counter() < end:
                if aligned:  # every model's burst starts on the same wall-clock 100 ms boundary
                    time.sleep(PERIOD_S - time.time() % PERIOD_S)
                start = time.perf_counter()
                if ops:
                    for _ in range(ops):
                        fn()
                    stream.synchronize()
                    busy.append(time.perf_counter() - start)
                if not aligned:
                    time.sleep(max(0.0, start + PERIOD_S - time.perf_counter()))

    threads = [threading.Thread(target=run, args=(fn,)) for fn in ops_of]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    del hold
    print(
        json.dumps(
            {
                "done": True,
                "periods": len(busy),
                "busy_mean_s": statistics.fmean(busy) if busy else 0.0,
                "busy_p95_s": sorted(busy)[int(0.95 * (len(busy) - 1))] if busy else 0.0,
                "solo_busy_s": ops * (t_op or 0.0),
                "overran_period": sum(1 for b in busy if b > PERIOD_S),
            }
        ),
        flush=True,
    )


@dataclass
class State:
    name: str
    workers: list[tuple[str, float]]  # (mode, duty) per process
    aligned: bool = False  # bursts on common wall-clock boundaries, else each process's own phase
    power_w: float = 0.0
    power_instant_w: float = 0.0
    utilization: float = 0.0
    sm_clock_mhz: float = 0.0
    memory_used_gib: float = 0.0
    seconds: float = 0.0
    worker_reports: list[dict[str, Any]] = field(default_factory=list)


def _measure(state: State, sampler: Any, measure_s: float, t_op: dict[str, float]) -> None:
    procs: list[subprocess.Popen[str]] = []
    spawned = time.monotonic()
    for mode, duty in state.workers:
        cmd = [sys.executable, __file__, "--worker", mode, str(duty), str(SETTLE_S + measure_s + 1.0)]
        kind = mode.partition("*")[0]
        if kind in t_op:
            cmd += ["--t-op", repr(t_op[kind])]
        if state.aligned:
            cmd.append("--aligned")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    for p in procs:  # wait until every worker holds its context and runs (reads block until it says so)
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker for {state.name} exited before it was ready (rc {p.wait()})")
        # Interpreter, torch, a CUDA context, 1 GiB and the operands: a floor on a cold start.
        state.worker_reports.append({**json.loads(line), "ready_after_s": time.monotonic() - spawned})
    time.sleep(SETTLE_S)  # power and NVML's utilization window follow the load with a lag of ~1 s
    first = sampler.sample()[0]
    t0 = time.monotonic()
    inst: list[float] = []
    util: list[float] = []
    clk: list[float] = []
    mem = 0.0
    while time.monotonic() - t0 < measure_s:
        time.sleep(0.25)
        s = sampler.sample()[0]
        if s.power_w is not None:
            inst.append(s.power_w)
        if s.utilization is not None:
            util.append(s.utilization)
        if s.sm_clock_hz is not None:
            clk.append(s.sm_clock_hz / 1e6)
        mem = max(mem, (s.memory_used_bytes or 0.0) / 2**30)
    last = sampler.sample()[0]
    state.seconds = time.monotonic() - t0
    state.power_w = (last.energy_j - first.energy_j) / state.seconds
    state.power_instant_w = statistics.fmean(inst) if inst else float("nan")
    state.utilization = statistics.fmean(util) if util else float("nan")
    state.sm_clock_mhz = statistics.fmean(clk) if clk else float("nan")
    state.memory_used_gib = mem
    for i, p in enumerate(procs):
        assert p.stdout is not None
        out, _ = p.communicate(timeout=120)
        for line in out.splitlines():
            if line.startswith("{"):
                state.worker_reports[i].update(json.loads(line))


def _fit(points: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Least squares P = c + m * u; returns (c, m, largest absolute residual)."""
    n = len(points)
    mu = sum(u for u, _ in points) / n
    mp = sum(p for _, p in points) / n
    var = sum((u - mu) ** 2 for u, _ in points)
    m = sum((u - mu) * (p - mp) for u, p in points) / var if var else 0.0
    c = mp - m * mu
    return c, m, max(abs(p - (c + m * u)) for u, p in points)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="power_profile.json")
    ap.add_argument("--measure-s", type=float, default=6.0)
    ap.add_argument("--worker", nargs=3, metavar=("MODE", "DUTY", "SECONDS"))
    ap.add_argument("--t-op", type=float)
    ap.add_argument("--aligned", action="store_true")
    ap.add_argument("--only", help="comma-separated state names to run (heavy@1.0 always: it calibrates)")
    args = ap.parse_args()
    if args.worker:
        mode, duty, seconds = args.worker
        _worker(mode, float(duty), float(seconds), args.t_op, args.aligned)
        return

    from greenserve_agent.collectors import GpuSampler
    from greenserve_agent.nvml import PynvmlPort

    port = PynvmlPort()
    sampler = GpuSampler(port)
    head = sampler.sample()[0]
    states = [
        State("bare", []),
        State("ctx1", [("idle", 0.0)]),
        State("ctx2", [("idle", 0.0), ("idle", 0.0)]),
        State("heavy@1.0", [("heavy", 1.0)]),  # first heavy state: calibrates the product's solo time
        *(State(f"heavy@{a}", [("heavy", a)]) for a in (0.05, 0.1, 0.25, 0.5, 0.75)),
        State("membound@1.0", [("membound", 1.0)]),
        State("light@1.0", [("light", 1.0)]),
        State("shared 2x0.25", [("heavy", 0.25)] * 2),
        State("shared 4x0.1", [("heavy", 0.1)] * 4),
        State("shared 2x0.5", [("heavy", 0.5)] * 2),
        State("shared 2x0.75", [("heavy", 0.75)] * 2),
        # The same loads with every burst on one boundary: as processes, and as one process with a stream
        # per model (a pool's TF Serving is one process).
        State("aligned procs 2x0.25", [("heavy", 0.25)] * 2, aligned=True),
        State("aligned procs 4x0.1", [("heavy", 0.1)] * 4, aligned=True),
        State("aligned procs 2x0.5", [("heavy", 0.5)] * 2, aligned=True),
        State("aligned streams 2x0.25", [("heavy*2", 0.25)], aligned=True),
        State("aligned streams 4x0.1", [("heavy*4", 0.1)], aligned=True),
        State("aligned streams 2x0.5", [("heavy*2", 0.5)], aligned=True),
        State("bare (end)", []),
    ]
    if args.only:
        keep = {"heavy@1.0", *args.only.split(",")}
        states = [st for st in states if st.name in keep]
    t_op: dict[str, float] = {}
    for st in states:
        _measure(st, sampler, args.measure_s, t_op)
        if st.name == "heavy@1.0":
            t_op["heavy"] = float(st.worker_reports[0]["t_op_s"])
        slow = [
            r["busy_mean_s"] / r["solo_busy_s"] for r in st.worker_reports if r.get("solo_busy_s", 0.0) > 0
        ]
        print(
            f"{st.name:>22}  {st.power_w:7.1f} W (instant {st.power_instant_w:7.1f})"
            f"  util {st.utilization:5.2f}"
            f"  SM {st.sm_clock_mhz:6.0f} MHz  mem {st.memory_used_gib:6.2f} GiB"
            + (f"  busy/solo {statistics.fmean(slow):.2f}" if slow else ""),
            flush=True,
        )
    by = {s.name: s for s in states}
    result: dict[str, Any] = {
        "gpu": head.name,
        "power_limit_w": head.power_limit_w,
        "memory_total_gib": (head.memory_total_bytes or 0.0) / 2**30,
        "states": [asdict(s) for s in states],
    }
    heavy = [(by[n].utilization, by[n].power_w) for n in by if n.startswith("heavy@")]
    if {"bare", "ctx1", "ctx2"} <= set(by) and len(heavy) > 1:  # an --only run may leave them out
        c, m, resid = _fit(heavy)
        result["model"] = {
            "bare_w": by["bare"].power_w,
            "loaded_idle_w": by["ctx1"].power_w,
            "second_context_w": by["ctx2"].power_w - by["ctx1"].power_w,
            "busy_w_at_util_1": c + m * 1.0,
            "linear_fit": {"intercept_w": c, "slope_w": m, "max_residual_w": resid},
            "tdp_w": head.power_limit_w,
        }
        print(json.dumps(result["model"], indent=1))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    port.shutdown()


if __name__ == "__main__":
    main()
