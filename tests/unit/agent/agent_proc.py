"""Test helpers: a real SavedModel on disk and the agent (``python -m greenserve_agent``) as a subprocess."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

MAKE_SAVEDMODEL = Path(__file__).with_name("make_savedmodel.py")
MODEL = "affine"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports. The sockets are held open together: ports taken one after another can
    repeat, since the kernel may hand a just-released port out again (CI saw rest == metrics once)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def make_saved_model(root: Path, name: str = MODEL) -> Path:
    """``root/name/1`` holding y = 2x + 1 (and the two-input signature ``two``); returns ``root/name``."""
    base = root / name
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, str(MAKE_SAVEDMODEL), str(base)], check=True, env=env, timeout=300)
    return base


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    rest_port: int
    metrics_port: int
    log_path: Path

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0, url: str | None = None) -> None:
        """Until `url` (default: the model's status on the REST port) answers 200."""
        url = url or f"{self.rest}/v1/models/{MODEL}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"agent not ready after {timeout}s:\n{self.log()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_agent(model_base: Path, log_path: Path, *extra: str, nofile: int | None = None) -> AgentProcess:
    """`nofile`: the agent's file-descriptor limit (RLIMIT_NOFILE), for tests of its connection cap."""
    rest, metrics = free_ports(2)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable, "-m", "greenserve_agent",
        "--port=0", f"--rest_api_port={rest}", f"--model_name={MODEL}", f"--model_base_path={model_base}",
        f"--agent-metrics-port={metrics}", "--agent-host=127.0.0.1", "--agent-backend=local",
        "--agent-simulate=true", *extra,
    ]  # fmt: skip
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_nofile(nofile) if nofile else None
        )
    return AgentProcess(proc, rest, metrics, log_path)


def _nofile(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


@dataclass
class LoadRun:
    results: list[tuple[float, int | str]]  # (when answered, 200 for a right answer, else status or error)
    sigterm_at: float
    exit_code: int | None


async def sigterm_under_load(
    agent: AgentProcess, readiness_url: str, clients: int, propagation_s: float = 0.0
) -> LoadRun:
    """`clients` keep predicting on pooled connections while the agent gets SIGTERM; a stand-in for the
    EndpointSlice controller polls `readiness_url` and, once it fails and `propagation_s` has passed (the
    removal reaching every proxy), stops the clients, as kube-proxy would stop routing to the pod."""
    endpoint_removed = asyncio.Event()
    results: list[tuple[float, int | str]] = []
    body = {"instances": [[float(i)] for i in range(256)]}

    async def client(http: aiohttp.ClientSession) -> None:
        while not endpoint_removed.is_set():
            try:
                async with http.post(f"{agent.rest}/v1/models/{MODEL}:predict", json=body) as r:
                    payload = await r.json()
                    ok = r.status == 200 and payload["predictions"][3] == [7.0]
                    results.append((time.monotonic(), 200 if ok else r.status))
            except aiohttp.ClientError as exc:
                results.append((time.monotonic(), type(exc).__name__))

    async def endpoints_controller(http: aiohttp.ClientSession) -> None:
        while True:
            async with http.get(readiness_url) as r:
                if r.status != 200:
                    await asyncio.sleep(propagation_s)
                    endpoint_removed.set()
                    return
            await asyncio.sleep(0.02)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        tasks = [asyncio.create_task(client(http)) for _ in range(clients)]
        watcher = asyncio.create_task(endpoints_controller(http))
        # Until the clients have been answered (the load is on), not a fixed time.
        while len(results) < 2 * clients:
            if agent.proc.poll() is not None or any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.05)
        sigterm_at = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(watcher, timeout=10)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    code = await asyncio.to_thread(agent.proc.wait, 60)
    return LoadRun(results, sigterm_at, code)
