"""What the agent's REST front costs: the same model server measured with and without the agent in front.

    python tests/harness/bench_front.py [--seconds 10] [--connections 32] [--out DIR]

A benchmark command, not a test (figures depend on the machine). For each CPU set (one core, two cores,
pinned with ``taskset``) it starts the serving image's local backend on a real SavedModel
(serving-image/greenserve_agent/local_backend.py, the CPU test variant's model server), then:

* **without the front**: ``wrk`` posts predictions straight to the backend's REST port;
* **with the front**: the agent (serving-image/greenserve_agent/supervisor.py) starts the same backend
  behind its REST front, and ``wrk`` posts to the front.

Latency (p50, p99) is measured with one connection (no queueing: the cost per request); the highest
throughput with ``--connections`` connections. ``wrk`` runs on the other core for the one-core case and
shares both cores for the two-core case (the machine has no third). The model is y = 2x + 1 on a batch of
one, so the figures are the serving path's overhead, not inference: with a real model's inference time
the front's share of the latency is smaller, its absolute cost per request the same.

Prints a table and writes ``bench_front.json`` to ``--out`` (default ``.harness/bench-front``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL = "affine"
LUA = """wrk.method = "POST"
wrk.body = '{"instances": [[1.0]]}'
wrk.headers["Content-Type"] = "application/json"
"""


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports, their sockets held together (ports taken one by one can repeat)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_available(port: int, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/{MODEL}", timeout=2) as r:
                if b"AVAILABLE" in r.read():
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"model not AVAILABLE on :{port} after {timeout:.0f} s")


@contextmanager
def server(front: bool, cpus: str, model_base: Path, log: Path) -> Iterator[int]:
    """The backend alone, or the agent with the backend behind its front; yields the port to load."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'operator'}:{REPO / 'serving-image'}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }
    port, grpc_port, metrics_port = free_ports(3)
    common = [f"--model_name={MODEL}", f"--model_base_path={model_base}"]
    if front:
        cmd = [
            sys.executable, "-m", "greenserve_agent", f"--rest_api_port={port}", f"--port={grpc_port}",
            f"--agent-metrics-port={metrics_port}", "--agent-backend=local", "--agent-simulate=true",
            "--agent-host=127.0.0.1", *common,
        ]  # fmt: skip
    else:
        cmd = [
            sys.executable, "-m", "greenserve_agent.local_backend", f"--rest_api_port={port}",
            "--host=127.0.0.1", *common,
        ]  # fmt: skip
    with log.open("ab") as out:
        # taskset pins the process and every child it starts (the agent's backend) to these CPUs.
        proc = subprocess.Popen(["taskset", "-c", cpus, *cmd], stdout=out, stderr=out, env=env)
    try:
        wait_available(port, proc)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(port: int, cpus: str, connections: int, seconds: float, script: Path) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict"
    cmd = [
        "taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency",
        "-s", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    pct = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    if not rps or set(pct) != {"50", "99"}:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return {
        "p50_ms": pct["50"],
        "p99_ms": pct["99"],
        "rps": float(rps.group(1)),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if sock else 0.0,
    }


def measure(model_base: Path, out: Path, seconds: float, connections: int) -> list[dict[str, object]]:
    script = out / "predict.lua"
    script.write_text(LUA)
    rows: list[dict[str, object]] = []
    # (server CPUs, client CPUs): one core with the client beside it; two cores shared with the client.
    for cores, cpus, client in ((1, "0", "1"), (2, "0,1", "0,1")):
        for front in (False, True):
            with server(front, cpus, model_base, out / "server.log") as port:
                wrk(port, client, 4, 2, script)  # warm-up: first TF calls trace and allocate
                lat = wrk(port, client, 1, seconds, script)
                thr = wrk(port, client, connections, seconds, script)
            row: dict[str, object] = {
                "cores": cores,
                "front": front,
                "p50_ms": lat["p50_ms"],
                "p99_ms": lat["p99_ms"],
                "rps_1conn": lat["rps"],
                "max_rps": thr["rps"],
                f"p50_ms_{connections}conn": thr["p50_ms"],
                "errors": lat["non_2xx"] + thr["non_2xx"] + lat["socket_errors"] + thr["socket_errors"],
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def report(rows: Sequence[dict[str, object]]) -> str:
    lines = [
        "| cores | front | p50 ms | p99 ms | max req/s | front's cost |",
        "|---|---|---|---|---|---|",
    ]
    by = {(r["cores"], r["front"]): r for r in rows}
    for cores in sorted({int(str(r["cores"])) for r in rows}):
        base, with_front = by[(cores, False)], by[(cores, True)]
        for r in (base, with_front):
            cost = ""
            if r is with_front:
                d50 = float(str(r["p50_ms"])) - float(str(base["p50_ms"]))
                drps = 1 - float(str(r["max_rps"])) / float(str(base["max_rps"]))
                cost = f"+{d50:.2f} ms p50, -{100 * drps:.0f}% throughput"
            lines.append(
                f"| {cores} | {'with' if r['front'] else 'without'} | {float(str(r['p50_ms'])):.2f} | "
                f"{float(str(r['p99_ms'])):.2f} | {float(str(r['max_rps'])):.0f} | {cost} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--out", type=Path, default=REPO / ".harness" / "bench-front")
    args = p.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("bench_front: needs wrk (Debian: apt-get install wrk)")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_front: needs two CPUs (server and client pinned apart)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gs-bench-front-") as tmp:
        base = Path(tmp) / MODEL
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        maker = REPO / "tests" / "unit" / "agent" / "make_savedmodel.py"
        subprocess.run([sys.executable, str(maker), str(base)], check=True, env=env, timeout=300)
        rows = measure(base, args.out, args.seconds, args.connections)
    (args.out / "bench_front.json").write_text(json.dumps(rows, indent=2))
    print(report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
