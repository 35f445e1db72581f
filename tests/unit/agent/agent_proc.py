"""Test helpers: a real SavedModel on disk and the agent (``python -m greenserve_agent``) as a subprocess."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAKE_SAVEDMODEL = Path(__file__).with_name("make_savedmodel.py")
MODEL = "affine"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.rest}/v1/models/{MODEL}", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
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
    rest, metrics = free_port(), free_port()
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
