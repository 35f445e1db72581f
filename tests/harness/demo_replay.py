"""The demo's replay: a real trace drives the operator on the local control plane, then a report.

Started by tests/harness/demo.sh once the control plane is up and the CRDs are installed. It starts the
digital twin (SIMULATED per-pod GPU metrics, tests/harness/twin.py, with queueing: replicas complete at most
their capacity and the rest waits in flight), Debian's Prometheus scraping it and the
operator reading that Prometheus; applies the example ModelService; replays an Azure LLM inference trace,
compressed in time, as the twin's load while printing a progress line; and ends with

* the live replay: requests per second, replicas, GPU nodes and simulated power over time (table and
  PNG), GPU-node-hours and simulated energy from the twin's counters;
* greenserve against the HPA-like baseline (and the other peers) on the same trace in the simulator,
  which runs the operator's policy code: energy, GPU-hours and SLO attainment (table and PNG).

The twin, Prometheus and the operator keep running afterwards (pids in .harness/, stopped by
`make cluster-down`). Every energy figure is simulated: kwok nodes have no GPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# The twin is harness code, not part of the shipped package; it runs as a script.
TWIN = REPO / "tests" / "harness" / "twin.py"
sys.path.insert(0, str(REPO / "tests"))

from greenserve.simulator.traces import default_traces_dir, read_azure_timestamps  # noqa: E402
from integration_prom import prom_server  # noqa: E402  (tests/ is not a package on sys.path by default)

STATE = REPO / ".harness"


def kubectl(*args: str, check: bool = True) -> str:
    out = subprocess.run(["kubectl", *args], capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A background process that outlives this script (own session), logged and pid-recorded in .harness/
    so that `tests/harness/cluster.sh down` stops it."""
    pidfile = STATE / f"{name}.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), 15)
    with (STATE / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    pidfile.write_text(str(proc.pid))
    return proc


def twin_counters(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("greenserve_twin_"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def trace_schedule(trace: Path, steps: int, step_s: float, peak_rps: float) -> list[tuple[float, float]]:
    """The trace's arrivals in `steps` equal bins, scaled so the busiest bin is `peak_rps`, one bin per
    `step_s` seconds of replay."""
    arrivals = read_azure_timestamps(trace)
    counts, _ = np.histogram(arrivals, bins=steps, range=(0.0, float(arrivals[-1]) + 1e-9))
    rates = counts / max(1, int(counts.max())) * peak_rps
    return [(i * step_s, round(float(r), 2)) for i, r in enumerate(rates)]


def write_schedule(path: Path, key: str, points: list[tuple[float, float]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({key: ",".join(f"{t:g}:{r:g}" for t, r in points)}))
    os.replace(tmp, path)


def msvc_status(ns: str, name: str) -> dict[str, Any]:
    body = json.loads(kubectl("get", "msvc", name, "-n", ns, "-o", "json"))
    status: dict[str, Any] = body.get("status", {})
    return status


def nodes_in_use(ns: str) -> int:
    pods = json.loads(kubectl("get", "pods", "-n", ns, "-o", "json"))["items"]
    return len({p["spec"].get("nodeName") for p in pods if p["spec"].get("nodeName")})


def plot_live(rows: list[dict[str, float]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    axes[0].plot(t, [r["rps"] for r in rows], label="offered load (req/s)")
    axes[0].set_ylabel("req/s")
    axes[1].step(t, [r["replicas"] for r in rows], where="post", label="ready replicas")
    axes[1].step(t, [r["nodes"] for r in rows], where="post", label="GPU nodes in use")
    axes[1].legend(loc="upper left")
    axes[2].plot(t, [r["power"] for r in rows], color="tab:red")
    axes[2].set_ylabel("cluster W (SIMULATED)")
    axes[2].set_xlabel("replay time (s)")
    fig.suptitle("greenserve demo: trace replayed on the local control plane (power SIMULATED)")
    fig.tight_layout()
    path = out / "demo-live.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--namespace", default="demo")
    p.add_argument("--name", default="resnet")
    p.add_argument("--trace", type=Path, default=default_traces_dir() / "AzureLLMInferenceTrace_code.csv")
    p.add_argument("--steps", type=int, default=36, help="trace bins replayed")
    p.add_argument("--step-s", type=float, default=5.0, help="seconds of replay per bin")
    p.add_argument("--out", type=Path, default=STATE / "demo")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    ns, name = args.namespace, args.name

    print("==> Digital twin (SIMULATED GPU metrics) and Prometheus (Debian package)", flush=True)
    schedule = STATE / "demo-schedule.json"
    schedule.write_text("{}")
    twin_port = free_port()
    spawn(
        "twin",
        [
            sys.executable,
            str(TWIN),
            "--port",
            str(twin_port),
            "--interval",
            "1",
            "--schedule-file",
            str(schedule),
            # Replicas complete at most their capacity; the rest waits in flight (what a burst does).
            "--queueing",
        ],
        env,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            twin_counters(twin_port)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the twin did not start: see .harness/twin.log") from None
            time.sleep(0.5)
    binary = prom_server.find_or_install()
    if not binary:
        raise SystemExit("Debian's prometheus package could not be installed (tests/harness/prometheus.sh)")
    prom_dir = STATE / "prometheus"
    prom_dir.mkdir(exist_ok=True)
    prom = prom_server.start(
        binary,
        prom_dir,
        [
            {
                "job_name": "greenserve-twin",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{twin_port}"]}],
            }
        ],
    )
    (STATE / "prometheus.pid").write_text(str(prom.proc.pid))
    print(f"    twin :{twin_port}, Prometheus {prom.url}")

    print("==> Operator, reading that Prometheus (log: .harness/operator.log)", flush=True)
    spawn(
        "operator",
        [sys.executable, "-m", "greenserve", "run", "--standalone"],
        {
            **env,
            "GREENSERVE_PROMETHEUS_URL": prom.url,
            "GREENSERVE_METRICS_WINDOW": "10",
            "GREENSERVE_METRICS_STALE_AFTER": "20",
            "GREENSERVE_RECONCILE_INTERVAL": "5",
            "GREENSERVE_CONSOLIDATION_INTERVAL": "10",
        },
    )

    print(f"==> Apply examples/model-store.yaml and examples/{name}.yaml; wait for Ready", flush=True)
    kubectl("create", "namespace", ns, check=False)
    kubectl("apply", "-f", str(REPO / "examples/model-store.yaml"))
    t_apply = time.monotonic()
    kubectl("apply", "-n", ns, "-f", str(REPO / f"examples/{name}.yaml"))
    # The replay is minutes long: a 30 s scale-down delay lets the load's dips show.
    kubectl(
        "patch",
        "msvc",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec":{"scaling":{"scaleDownDelaySeconds":30}}}',
    )
    kubectl("wait", "-n", ns, "--for=condition=Ready", f"msvc/{name}", "--timeout=180s")
    ready_s = time.monotonic() - t_apply
    print(f"    ModelService Ready {ready_s:.1f} s after kubectl apply")
    spec = json.loads(kubectl("get", "msvc", name, "-n", ns, "-o", "json"))["spec"]["scaling"]
    peak = 0.9 * float(spec["maxReplicas"]) * float(spec["target"])
    points = trace_schedule(args.trace, args.steps, args.step_s, peak)
    total = args.steps * args.step_s

    print(
        f"==> Replay {args.trace.name}: {args.steps} bins x {args.step_s:g} s, peak {peak:g} req/s",
        flush=True,
    )
    start = twin_counters(twin_port)
    write_schedule(schedule, f"{ns}/{name}", points)
    t0 = time.monotonic()
    rows: list[dict[str, float]] = []
    while (t := time.monotonic() - t0) < total:
        rate = next((r for ts, r in reversed(points) if ts <= t), 0.0)
        st = msvc_status(ns, name)
        tc = twin_counters(twin_port)
        row = {
            "t": round(t, 1),
            "rps": rate,
            "replicas": float(st.get("readyReplicas") or 0),
            "nodes": float(nodes_in_use(ns)),
            "power": tc.get("greenserve_twin_cluster_power_watts", 0.0),
        }
        rows.append(row)
        print(
            f"    [{t:5.0f}/{total:.0f} s] load {rate:6.1f} req/s  ready {row['replicas']:.0f}"
            f"  desired {st.get('desiredReplicas', '?')}  in flight {st.get('inflightRequests', '?')}"
            f"  on {row['nodes']:.0f} GPU nodes"
            f"  power {row['power']:7.0f} W (simulated)",
            flush=True,
        )
        time.sleep(args.step_s)
    end = twin_counters(twin_port)
    write_schedule(schedule, f"{ns}/{name}", [(0.0, points[-1][1])])

    def delta(key: str) -> float:
        return end.get(key, 0.0) - start.get(key, 0.0)

    moves = kubectl(
        "get", "events", "-n", ns, "--field-selector", "reason=ReplicaMoved", "-o", "name", check=False
    ).split()
    live = {
        "trace": args.trace.name,
        "replay_s": round(total, 1),
        "ready_after_apply_s": round(ready_s, 1),
        "peak_ready_replicas": max(r["replicas"] for r in rows),
        "gpu_node_hours": round(delta("greenserve_twin_gpu_node_seconds_total") / 3600, 4),
        "energy_kwh_simulated": round(delta("greenserve_twin_cluster_energy_joules_total") / 3.6e6, 5),
        "moves": len(moves),
        "requests_dropped": round(delta("greenserve_twin_requests_dropped_total")),
    }
    (args.out / "demo-live.json").write_text(json.dumps({"summary": live, "rows": rows}, indent=1))
    print("\n==> Live replay on the local control plane (energy SIMULATED by the twin's power model)")
    for key, value in live.items():
        print(f"    {key:<22} {value}")
    print(f"    plot: {plot_live(rows, args.out)}")

    print(
        "\n==> greenserve against the HPA-like baseline on the same trace (simulator, same policy code)",
        flush=True,
    )
    bench = subprocess.run(
        [sys.executable, "-m", "greenserve", "bench", "--trace", "azure-code", "--out", str(args.out)],
        text=True,
        capture_output=True,
        check=False,
    )
    print(bench.stdout)
    if bench.returncode != 0:
        print(bench.stderr, file=sys.stderr)
        return bench.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
