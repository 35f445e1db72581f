"""The entrypoint supervisor: starts the model server, fronts its REST port, exports telemetry, drains.

Process layout inside the serving container::

    :8501  agent REST front  --proxy-->  127.0.0.1:<internal>  model server REST (TF Serving or local)
    :8500  gRPC, served by tensorflow_model_server itself (the local backend has no gRPC)
    :9400  agent /metrics (GPU + agent + TF Serving's request metrics), /ready, /healthz

No client can starve it (`greenserve_agent.limits`): both listeners cap their connections below the
file-descriptor limit (idle ones are evicted first, a 503 only when all are busy), time out idle
connections and slow headers, and the metrics port has its own cap, apart from prediction traffic.
Request bodies are bounded (``--agent-max-body-bytes``, 64 MiB): a larger one gets a 413, by its
Content-Length before anything is read, or as soon as a chunked body passes the limit.

The agent owns readiness: ``GET /v1/models/<name>`` on the front port (the pod's readinessProbe) answers
200 only while the backend reports the model AVAILABLE and the agent is not draining.

Drain on SIGTERM (Kubernetes sends it after the preStop sleep, once the endpoint is being removed):

1. readiness turns false at once (probe and ``/ready`` answer 503);
2. requests keep being accepted and proxied - a client that has not yet seen the endpoint removal is
   never refused;
3. once no REST request is in flight and none has arrived for ``drain_quiet_s`` (bounded by
   ``drain_timeout_s``), the model server is stopped (SIGTERM, then SIGKILL after a grace) and the agent
   exits 0.

gRPC requests go straight to TF Serving, so the agent cannot count them; they are covered by the quiet
period and by TF Serving's own shutdown only.

Without the front (``--agent-front=off``; tests/harness/bench_front.py measures what the front costs), the
model server listens on the REST port itself and the agent only supervises and exports: readiness is the
agent's ``/ready`` on the metrics port, request metrics are TF Serving's own (passed through), and the
drain waits until TF Serving's request counter has been still for ``drain_quiet_s`` before stopping it
(its graceful shutdown finishes what is in flight). The agent's request counter, duration histogram and
in-flight gauge are then absent, and the simulated GPU's activity comes from TF Serving's latency sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from greenserve import __version__
from greenserve import contract as k
from greenserve_agent.collectors import GpuCollector, GpuSampler
from greenserve_agent.limits import Listener, fd_budget_cap, serving
from greenserve_agent.local_backend import parse_model_config
from greenserve_agent.nvml import NvmlPort, NvmlUnavailable, PynvmlPort
from greenserve_agent.simulated import DEFAULT_PRODUCT, SimulatedNvml, SimulatedState

log = logging.getLogger(__name__)

BackendKind = Literal["auto", "tfserving", "local"]
SimulateMode = Literal["auto", "true", "false"]
TFS_BINARY = "tensorflow_model_server"
DEFAULT_MAX_BODY_BYTES = 64 << 20
MONITORING_CONFIG = k.TFS_MONITORING_CONFIG
_SKIP_HEADERS = k.HOP_BY_HOP_HEADERS


@dataclass
class AgentConfig:
    model_name: str | None  # None: several models from model_config_file (a shared pool pod)
    model_base_path: str | None
    rest_port: int = 8501
    grpc_port: int = 8500
    metrics_port: int = k.AGENT_METRICS_PORT
    host: str = "0.0.0.0"
    backend: BackendKind = "auto"
    backend_rest_port: int = 0  # 0: a free port on 127.0.0.1
    monitoring_config_file: str | None = None
    # TF Serving's model config file (several models) and how often the model server re-reads it.
    model_config_file: str | None = None
    model_config_poll_s: float = 0.0
    extra_args: list[str] = field(default_factory=list)
    drain_timeout_s: float = 45.0
    drain_quiet_s: float = 1.0
    simulate: SimulateMode = "auto"
    simulated_product: str = DEFAULT_PRODUCT
    simulated_count: int = 1
    front: bool = True  # the agent's REST proxy in front of the model server
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Connections of the REST front (lowered to fit the descriptor limit) and of the metrics port.
    max_connections: int = 1024
    metrics_max_connections: int = 64
    idle_timeout_s: float = 30.0  # keep-alive connection without a request
    header_timeout_s: float = 10.0  # from a request's first byte to its complete headers
    body_timeout_s: float = 60.0  # to receive a whole request body


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class InflightTracker:
    """REST requests in flight, and the busy fraction of wall time (the simulated GPU's activity)."""

    def __init__(self) -> None:
        self.count = 0
        self.last_activity = time.monotonic()
        self._busy_since: float | None = None
        self._busy_total = 0.0

    def start(self) -> None:
        now = time.monotonic()
        if self.count == 0:
            self._busy_since = now
        self.count += 1
        self.last_activity = now

    def finish(self) -> None:
        now = time.monotonic()
        self.count -= 1
        self.last_activity = now
        if self.count == 0 and self._busy_since is not None:
            self._busy_total += now - self._busy_since
            self._busy_since = None

    def busy_seconds(self) -> float:
        extra = time.monotonic() - self._busy_since if self._busy_since is not None else 0.0
        return self._busy_total + extra

    def add_busy(self, seconds: float) -> None:
        """Busy time measured elsewhere (TF Serving's latency sum when there is no front)."""
        self._busy_total += max(0.0, seconds)


def make_nvml(cfg: AgentConfig, activity: InflightTracker) -> tuple[NvmlPort, SimulatedState | None]:
    if cfg.simulate != "true":
        try:
            return PynvmlPort(), None
        except NvmlUnavailable as exc:
            if cfg.simulate == "false":
                raise
            log.warning("NVML unavailable (%s)", exc)
    state = SimulatedState(activity.busy_seconds)
    port = SimulatedNvml(cfg.simulated_product, cfg.simulated_count, state)
    log.warning(
        'SIMULATED GPU: exporting %d simulated %s device(s); every GPU series carries simulated="true"',
        cfg.simulated_count,
        cfg.simulated_product,
    )
    return port, state


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.ready = Gauge(k.AGENT_READY.family, k.AGENT_READY.help, registry=registry)
        self.inflight = Gauge(k.AGENT_INFLIGHT.family, k.AGENT_INFLIGHT.help, registry=registry)
        self.requests = Counter(k.REQUESTS.family, k.REQUESTS.help, k.REQUESTS.labels, registry=registry)
        self.duration = Histogram(
            k.REQUEST_DURATION.family, k.REQUEST_DURATION.help, k.REQUEST_DURATION.labels, registry=registry
        )
        self.info = Info(k.AGENT_INFO.family, k.AGENT_INFO.help, registry=registry)


def tfs_totals(text: str) -> tuple[float, float]:
    """(requests, latency sum in seconds) over all label sets of TF Serving's text exposition."""
    requests = latency_us = 0.0
    for line in text.splitlines():
        if line.startswith(k.TFS_REQUEST_COUNT + "{") or line.startswith(k.TFS_REQUEST_LATENCY + "_sum{"):
            try:
                value = float(line.rsplit(None, 1)[1])
            except (IndexError, ValueError):
                continue
            if line.startswith(k.TFS_REQUEST_COUNT):
                requests += value
            else:
                latency_us += value
    return requests, latency_us * k.TFS_LATENCY_UNIT_S


def filter_tfs_exposition(text: str) -> str:
    """Keep TF Serving's ``:tensorflow:serving:*`` families from a text exposition, verbatim."""
    keep: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and parts[2].startswith(k.TFS_PREFIX):
                keep.append(line)
        elif line.startswith(k.TFS_PREFIX):
            keep.append(line)
    return "\n".join(keep) + ("\n" if keep else "")


# A model name no model config uses: its status request tells whether a multi-model server answers.
_PROBE_MODEL = "greenserve-agent-probe"


def model_of(path: str) -> str | None:
    """The model a REST path addresses (/v1/models/<name>[/versions/<v>][:verb]), or None."""
    if not path.startswith("/v1/models/"):
        return None
    rest = path[len("/v1/models/") :]
    return rest.split("/", 1)[0].split(":", 1)[0] or None


class Supervisor:
    def __init__(self, cfg: AgentConfig, nvml: NvmlPort | None = None) -> None:
        self.cfg = cfg
        self.tracker = InflightTracker()
        self.registry = CollectorRegistry(auto_describe=False)
        self.metrics = AgentMetrics(self.registry)
        self.sim_state: SimulatedState | None = None
        if nvml is None:
            nvml, self.sim_state = make_nvml(cfg, self.tracker)
        self.nvml = nvml
        self.sampler = GpuSampler(nvml)
        self.registry.register(GpuCollector(self.sampler))
        self.backend_kind: Literal["tfserving", "local"] = "local"
        # Without the front the model server serves the REST port itself.
        self.backend_port = (cfg.backend_rest_port or free_port()) if cfg.front else cfg.rest_port
        self.backend_url = f"http://127.0.0.1:{self.backend_port}"
        self.process: asyncio.subprocess.Process | None = None
        self.model_available = False
        self.draining = False
        self.stop_requested = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self.front_listener = Listener("REST front", fd_budget_cap(cfg.max_connections), cfg.header_timeout_s)
        self.metrics_listener = Listener("metrics", cfg.metrics_max_connections, cfg.header_timeout_s)
        self._tasks: list[asyncio.Task[None]] = []
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.exit_code = 0  # non-zero when the model server died on its own
        # TF Serving's request counter and latency sum as last read, and when the counter last moved.
        self._tfs_requests: float | None = None
        self._tfs_latency_s: float | None = None
        self._tfs_changed_at = time.monotonic()
        # Models whose request series exist (at 0 from their load), and the model config file as last read.
        self._series_started: set[str] = set()
        self._config_stamp: int | None = None
        self._config_names: set[str] = set()

    # --- state ---------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.model_available and not self.draining

    @property
    def multi_model(self) -> bool:
        """Serving the models of a model config file: readiness is the model server answering, and
        whether a given model is loaded is its own status endpoint (which the operator reads)."""
        return self.cfg.model_name is None

    def _set_available(self, available: bool) -> None:
        if available != self.model_available:
            what = f"model {self.cfg.model_name}" if self.cfg.model_name else "model server"
            log.info("%s %s", what, "AVAILABLE" if available else "not available")
        self.model_available = available
        if available and self.cfg.model_name:
            self._start_series(self.cfg.model_name)
        if self.sim_state is not None:
            self.sim_state.resident = available
        self.metrics.ready.set(1 if self.ready else 0)

    def _start_series(self, model: str) -> None:
        """The model's request series exist from its load on, at 0: a counter that first appears with
        the first requests has no sample before them, and Prometheus' increase() over a window that
        holds its start loses what came before its first scrape."""
        self.metrics.requests.labels(model, "200")
        self.metrics.duration.labels(model)
        self._series_started.add(model)

    def _config_models(self) -> set[str]:
        """The models of the model config file, re-read when it changes; a file that cannot be read or
        parsed keeps the last good list (the model server keeps its models then too)."""
        path = self.cfg.model_config_file
        if path is None:
            return set()
        try:
            stamp = os.stat(path).st_mtime_ns
            if stamp != self._config_stamp:
                with open(path, encoding="utf-8") as f:
                    self._config_names = set(parse_model_config(f.read()))
                self._config_stamp = stamp
        except (OSError, ValueError) as exc:
            log.debug("model config %s not read: %s", path, exc)
        return self._config_names

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() first"
        return self._session

    # --- backend -------------------------------------------------------------------------------------

    def _backend_command(self) -> list[str]:
        cfg = self.cfg
        kind = cfg.backend
        if kind == "auto":
            kind = "tfserving" if shutil.which(TFS_BINARY) else "local"
        self.backend_kind = kind
        # TF Serving exports its request metrics only with a monitoring config; the local backend too.
        monitoring = cfg.monitoring_config_file or self._write_monitoring_config()
        if cfg.model_config_file:
            models = [
                f"--model_config_file={cfg.model_config_file}",
                f"--model_config_file_poll_wait_seconds={cfg.model_config_poll_s:g}",
            ]
        else:
            models = [f"--model_name={cfg.model_name}", f"--model_base_path={cfg.model_base_path}"]
        if kind == "tfserving":
            return [
                TFS_BINARY,
                f"--port={cfg.grpc_port}",
                f"--rest_api_port={self.backend_port}",
                *models,
                f"--monitoring_config_file={monitoring}",
                *cfg.extra_args,
            ]
        log.warning("%s not found: serving with the local TensorFlow backend (REST only)", TFS_BINARY)
        return [
            sys.executable, "-m", "greenserve_agent.local_backend",
            f"--rest_api_port={self.backend_port}", f"--host={'127.0.0.1' if cfg.front else cfg.host}",
            *models, f"--monitoring_config_file={monitoring}", *cfg.extra_args,
        ]  # fmt: skip

    def _write_monitoring_config(self) -> str:
        default = "/etc/greenserve/monitoring.config"
        if os.path.exists(default):
            return default
        self._tmpdir = tempfile.TemporaryDirectory(prefix="greenserve-agent-")
        path = os.path.join(self._tmpdir.name, "monitoring.config")
        with open(path, "w") as f:
            f.write(MONITORING_CONFIG)
        return path

    async def _model_status(self, model: str) -> tuple[int, bool]:
        """(HTTP status of the model server's status endpoint for `model`, whether a version of it is
        AVAILABLE); (0, False) when the server does not answer."""
        url = f"{self.backend_url}/v1/models/{model}"
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status != 200:
                    return resp.status, False
                body = await resp.json(content_type=None)
                states = [v.get("state") for v in body.get("model_version_status", [])]
                return resp.status, "AVAILABLE" in states
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return 0, False

    async def _poll_backend(self) -> None:
        while True:
            if self.multi_model:
                # The model server answers (404 for the probe's unknown model): it is up.
                code, _ = await self._model_status(_PROBE_MODEL)
                available = 0 < code < 500
            else:
                _, available = await self._model_status(self.cfg.model_name or _PROBE_MODEL)
            self._set_available(available)
            if available and self.multi_model:
                # A pool's models load and unload while the server runs: each one's series start at 0
                # once it is AVAILABLE, as a single model's do (`_set_available`).
                for model in sorted(self._config_models() - self._series_started):
                    if (await self._model_status(model))[1]:
                        self._start_series(model)
            if available and not self.cfg.front:
                await self._read_tfs_totals()
            await asyncio.sleep(0.25 if not available else 1.0)

    async def _read_tfs_totals(self) -> None:
        """Without the front: follow TF Serving's own request counter (drain) and latency sum (the
        simulated GPU's activity)."""
        text = await self._tfs_metrics()
        if not text:
            return
        requests, latency_s = tfs_totals(text)
        if self._tfs_requests is not None and requests != self._tfs_requests:
            self._tfs_changed_at = time.monotonic()
        if self._tfs_latency_s is not None:
            self.tracker.add_busy(latency_s - self._tfs_latency_s)
        self._tfs_requests, self._tfs_latency_s = requests, latency_s

    async def _watch_backend(self) -> None:
        assert self.process is not None
        code = await self.process.wait()
        if not self.draining:
            log.error("model server exited unexpectedly with %s", code)
            self.exit_code = code or 1
            self.stop_requested.set()

    # --- REST front ------------------------------------------------------------------------------------

    async def _front(self, request: web.Request) -> web.StreamResponse:
        model = self.cfg.model_name or model_of(request.path) or ""
        status_get = request.method == "GET" and request.path == f"/v1/models/{model}"
        if status_get and not self.ready:
            # A draining pod reports every model unavailable (also in a pool: the operator reads it).
            reason = "draining" if self.draining else "model not available yet"
            return web.json_response({"error": f"{model}: {reason}"}, status=503)
        self.tracker.start()
        self.metrics.inflight.inc()
        start = time.perf_counter()
        code = 502
        try:
            body = await self._read_body(request)
            if body is None:
                code = 413
                return self._too_large()
            headers = {h: v for h, v in request.headers.items() if h.lower() not in _SKIP_HEADERS}
            try:
                async with self.session.request(
                    request.method, self.backend_url + request.rel_url.raw_path_qs, headers=headers, data=body
                ) as resp:
                    payload = await resp.read()
                    code = resp.status
                    out_headers = {h: v for h, v in resp.headers.items() if h.lower() not in _SKIP_HEADERS}
                    return web.Response(body=payload, status=resp.status, headers=out_headers)
            except aiohttp.ClientError as exc:
                code = 503
                return web.json_response({"error": f"model server unreachable: {exc}"}, status=503)
        finally:
            # Per model also in a pool: a model's share of the busy time splits the pod's energy. A
            # pool's model comes from the path: one the server does not know is "" (bounded label values).
            if self.multi_model and code == 404:
                model = ""
            self.metrics.duration.labels(model).observe(time.perf_counter() - start)
            self.metrics.requests.labels(model, str(code)).inc()
            self.metrics.inflight.dec()
            self.tracker.finish()

    def _too_large(self) -> web.Response:
        limit = self.cfg.max_body_bytes
        return web.json_response(
            {"error": f"request body larger than the agent's limit of {limit} bytes"}, status=413
        )

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The whole body, or None past the limit: by Content-Length before reading anything, else
        counted chunk by chunk (chunked encoding), so that at most the limit is ever held."""
        limit = self.cfg.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(self.cfg.body_timeout_s):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    return None  # aiohttp reads and drops the rest for a while, then closes
                chunks.append(chunk)
        return b"".join(chunks)

    # --- metrics server ------------------------------------------------------------------------------

    async def _tfs_metrics(self) -> str:
        try:
            async with self.session.get(
                self.backend_url + k.TFS_MONITORING_PATH, timeout=aiohttp.ClientTimeout(total=2)
            ) as resp:
                if resp.status == 200:
                    return filter_tfs_exposition(await resp.text())
        except (aiohttp.ClientError, TimeoutError):
            pass  # absent from this scrape, never invented
        return ""

    async def _metrics(self, _request: web.Request) -> web.Response:
        tfs = await self._tfs_metrics()
        # NVML reads can block for milliseconds; keep them off the event loop.
        own = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=own + tfs.encode(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _ready(self, _request: web.Request) -> web.Response:
        status = 200 if self.ready else 503
        return web.json_response(
            {"ready": self.ready, "draining": self.draining, "inflight": self.tracker.count}, status=status
        )

    async def _healthz(self, _request: web.Request) -> web.Response:
        alive = self.process is not None and self.process.returncode is None
        return web.json_response({"alive": alive}, status=200 if alive else 503)

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        # The first reading is the energy counter's baseline: the exported joules count from agent start.
        await asyncio.to_thread(self.sampler.sample)
        # Model-server connections: at most one per front connection (within the descriptor budget).
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.front_listener.max_connections + 8),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        cmd = self._backend_command()
        self.metrics.info.info(
            {
                k.LABEL_VERSION: __version__,
                k.LABEL_BACKEND: self.backend_kind,
                k.LABEL_MODEL: cfg.model_name or "",
                k.LABEL_SIMULATED: "true" if self.nvml.simulated else "false",
            }
        )
        log.info("starting model server: %s", " ".join(cmd))
        self.process = await asyncio.create_subprocess_exec(*cmd)
        side = web.Application(middlewares=[serving])
        side.router.add_get(k.AGENT_METRICS_PATH, self._metrics)
        side.router.add_get(k.AGENT_READY_PATH, self._ready)
        side.router.add_get("/healthz", self._healthz)
        apps = [(side, cfg.metrics_port, self.metrics_listener)]
        if cfg.front:
            front = web.Application(client_max_size=cfg.max_body_bytes, middlewares=[serving])
            front.router.add_route("*", "/{tail:.*}", self._front)
            apps.insert(0, (front, cfg.rest_port, self.front_listener))
        else:
            # No agent request series: absent, never a zero the operator could read as no traffic.
            for metric in (self.metrics.requests, self.metrics.duration, self.metrics.inflight):
                self.registry.unregister(metric)
        for app, port, listener in apps:
            # keepalive_timeout is aiohttp's idle timeout, armed from the connection's start too.
            runner = web.AppRunner(
                app, access_log=None, shutdown_timeout=1.0, keepalive_timeout=cfg.idle_timeout_s
            )
            await runner.setup()
            await listener.start(runner, cfg.host, port)
            self._runners.append(runner)
        if cfg.front:
            log.info(
                "agent REST front on %s:%d (at most %d connections), metrics on :%d",
                cfg.host,
                cfg.rest_port,
                self.front_listener.max_connections,
                cfg.metrics_port,
            )
        else:
            log.info("no REST front: model server on :%d, metrics on :%d", cfg.rest_port, cfg.metrics_port)
        self._tasks = [asyncio.create_task(self._poll_backend()), asyncio.create_task(self._watch_backend())]

    def request_stop(self) -> None:
        if not self.stop_requested.is_set():
            log.info("SIGTERM: draining")
        self.stop_requested.set()

    async def drain(self) -> None:
        """Stop being ready, let in-flight and late-arriving requests finish, then stop the model server."""
        self.draining = True
        self.metrics.ready.set(0)
        cfg = self.cfg
        deadline = time.monotonic() + cfg.drain_timeout_s
        if not cfg.front:
            await self._drain_without_front(deadline)
            return
        log.info("draining: readiness false, %d request(s) in flight", self.tracker.count)
        while time.monotonic() < deadline:
            quiet = time.monotonic() - self.tracker.last_activity
            if self.tracker.count == 0 and quiet >= cfg.drain_quiet_s:
                break
            await asyncio.sleep(0.05)
        else:
            log.warning(
                "drain timeout after %.0fs with %d request(s) in flight",
                cfg.drain_timeout_s,
                self.tracker.count,
            )
        log.info("drained; stopping the model server")

    async def _drain_without_front(self, deadline: float) -> None:
        """Wait until TF Serving's request counter has been still for the quiet period: clients that
        still hold connections to this pod have stopped. What is in flight then is finished by the model
        server's graceful shutdown (SIGTERM in stop())."""
        quiet = self.cfg.drain_quiet_s
        log.info("draining without the front: until TF Serving's request counter is still for %.1fs", quiet)
        while time.monotonic() < deadline:
            await self._read_tfs_totals()
            if time.monotonic() - self._tfs_changed_at >= quiet:
                log.info("drained; stopping the model server")
                return
            await asyncio.sleep(min(0.1, quiet / 4))
        log.warning("drain timeout after %.0fs: requests still arriving", self.cfg.drain_timeout_s)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        listeners = (self.front_listener, self.metrics_listener)
        for listener in listeners:
            listener.stop_listening()
        for runner in self._runners:
            await runner.cleanup()
        for listener in listeners:
            await listener.wait_closed()
        if self._session is not None:
            await self._session.close()
        self.nvml.shutdown()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        try:
            await self.stop_requested.wait()
            if self.exit_code == 0:
                await self.drain()
        finally:
            self.draining = True
            await self.stop()
        return self.exit_code


def parse_args(argv: Sequence[str]) -> AgentConfig:
    """Agent flags are ``--agent-*``; TF Serving's own flags are accepted as TF Serving spells them and
    unknown ones are passed to the model server unchanged (the Deployment passes TF Serving's args)."""
    import argparse

    p = argparse.ArgumentParser(
        prog="greenserve-agent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--port", type=int, default=8500, help="gRPC port (TF Serving)")
    p.add_argument("--rest_api_port", type=int, default=8501, help="REST port, fronted by the agent")
    p.add_argument("--model_name", default=None)
    p.add_argument("--model_base_path", default=None)
    p.add_argument("--monitoring_config_file", default=None)
    p.add_argument("--model_config_file", default=None, help="several models (TF Serving's format)")
    p.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0)
    p.add_argument("--agent-metrics-port", type=int, default=k.AGENT_METRICS_PORT)
    p.add_argument("--agent-host", default="0.0.0.0")
    p.add_argument(
        "--agent-backend",
        choices=["auto", "tfserving", "local"],
        default=os.environ.get("GREENSERVE_BACKEND", "auto"),
    )
    p.add_argument("--agent-backend-port", type=int, default=0)
    p.add_argument(
        "--agent-front",
        choices=["on", "off"],
        default=os.environ.get("GREENSERVE_AGENT_FRONT", "on"),
        help="the REST proxy in front of the model server (off: see the module docstring)",
    )
    p.add_argument("--agent-drain-timeout", type=float, default=45.0)
    p.add_argument("--agent-drain-quiet", type=float, default=1.0)
    p.add_argument(
        "--agent-max-body-bytes",
        type=int,
        default=int(os.environ.get("GREENSERVE_AGENT_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
        help="larger request bodies get a 413 (default 64 MiB)",
    )
    p.add_argument(
        "--agent-max-connections",
        type=int,
        default=int(os.environ.get("GREENSERVE_AGENT_MAX_CONNECTIONS", "1024")),
        help="REST front connections (lowered to fit the file-descriptor limit)",
    )
    p.add_argument("--agent-metrics-max-connections", type=int, default=64)
    p.add_argument("--agent-idle-timeout", type=float, default=30.0)
    p.add_argument("--agent-header-timeout", type=float, default=10.0)
    p.add_argument("--agent-body-timeout", type=float, default=60.0)
    p.add_argument(
        "--agent-simulate", choices=["auto", "true", "false"], default=os.environ.get(k.ENV_SIMULATE, "auto")
    )
    p.add_argument("--agent-simulated-gpu", default=os.environ.get(k.ENV_SIMULATED_PRODUCT, DEFAULT_PRODUCT))
    p.add_argument(
        "--agent-simulated-gpu-count", type=int, default=int(os.environ.get(k.ENV_SIMULATED_COUNT, "1"))
    )
    args, extra = p.parse_known_args(list(argv))
    if not args.model_config_file and not args.model_name:
        args.model_name = os.environ.get("MODEL_NAME")  # TF Serving image's convention, one model only
    if args.model_config_file:
        if args.model_name or args.model_base_path:
            p.error("--model_config_file excludes --model_name and --model_base_path (as in TF Serving)")
    elif not args.model_name:
        p.error("--model_name (or MODEL_NAME), or --model_config_file, is required")
    base = args.model_base_path
    if base is None and args.model_name:
        # TF Serving's image convention: MODEL_BASE_PATH/MODEL_NAME.
        base = os.path.join(os.environ.get("MODEL_BASE_PATH", "/models"), args.model_name)
    return AgentConfig(
        model_name=args.model_name,
        model_base_path=base,
        rest_port=args.rest_api_port,
        grpc_port=args.port,
        metrics_port=args.agent_metrics_port,
        host=args.agent_host,
        backend=args.agent_backend,
        backend_rest_port=args.agent_backend_port,
        monitoring_config_file=args.monitoring_config_file,
        model_config_file=args.model_config_file,
        model_config_poll_s=args.model_config_file_poll_wait_seconds,
        extra_args=extra,
        drain_timeout_s=args.agent_drain_timeout,
        drain_quiet_s=args.agent_drain_quiet,
        simulate=args.agent_simulate,
        simulated_product=args.agent_simulated_gpu,
        simulated_count=args.agent_simulated_gpu_count,
        front=args.agent_front == "on",
        max_body_bytes=max(1, args.agent_max_body_bytes),
        max_connections=max(1, args.agent_max_connections),
        metrics_max_connections=max(1, args.agent_metrics_max_connections),
        idle_timeout_s=args.agent_idle_timeout,
        header_timeout_s=args.agent_header_timeout,
        body_timeout_s=args.agent_body_timeout,
    )
