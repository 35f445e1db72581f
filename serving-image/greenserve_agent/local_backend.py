"""A TF Serving stand-in for machines without the ``tensorflow_model_server`` binary.

It loads a real SavedModel with TensorFlow (the newest numeric version under ``--model_base_path``, as TF
Serving's default version policy does) and answers the subset of TF Serving's REST API the operator and the
tests use:

* one model (``--model_name``, ``--model_base_path``) or several from TF Serving's model config file
  (``--model_config_file``, re-read every ``--model_config_file_poll_wait_seconds``: models added are
  loaded, models removed are unloaded), as the shared GPU pools run it
  (operator/greenserve/manifests/pools.py);
* ``GET  /v1/models/<name>`` and ``/v1/models/<name>/versions/<v>``: model status, TF Serving's JSON shape
  (``model_version_status[].state`` is ``LOADING`` until the SavedModel is loaded, then ``AVAILABLE``);
* ``POST /v1/models/<name>[/versions/<v>]:predict``: the row (``instances`` -> ``predictions``) and columnar
  (``inputs`` -> ``outputs``) forms, with ``signature_name`` (default ``serving_default``);
* ``GET  /monitoring/prometheus/metrics``: ``:tensorflow:serving:request_count{model_name,status}`` and the
  ``:tensorflow:serving:request_latency{model_name,API,entrypoint}`` histogram in microseconds, with TF
  Serving's own names, label keys and buckets (written by hand: prometheus_client would add ``_total``).
  Like TF Serving, only with ``--monitoring_config_file`` naming a ``prometheus_config`` with
  ``enable: true`` (at its ``path``); without it the endpoint does not exist.

There is no gRPC endpoint; the supervisor says so when it starts this backend.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from greenserve import contract as k

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"


class PredictError(Exception):
    """A client error: TF Serving answers these with 400 and ``{"error": ...}``."""


def latest_version(base_path: str | os.PathLike[str]) -> tuple[int, Path]:
    """The highest numeric version directory under ``base_path`` (TF Serving's ``latest`` policy)."""
    base = Path(base_path)
    versions = sorted(
        (int(p.name), p)
        for p in base.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").exists()
    )
    if not versions:
        raise FileNotFoundError(f"no SavedModel version directory under {base}")
    return versions[-1]


class LoadedModel:
    """One SavedModel version, loaded with TensorFlow; ``predict`` runs real inference."""

    def __init__(self, name: str, version: int, path: Path) -> None:
        import tensorflow as tf  # imported here: only this backend needs TensorFlow

        self._tf = tf
        self.name = name
        self.version = version
        self._obj = tf.saved_model.load(str(path))
        self._signatures: Mapping[str, Any] = dict(self._obj.signatures)
        if not self._signatures:
            raise ValueError(f"{path} has no signatures")

    def _signature(self, name: str | None) -> Any:
        key = name or DEFAULT_SIGNATURE
        if key not in self._signatures:
            raise PredictError(f'Serving signature name: "{key}" not found in signature def')
        return self._signatures[key]

    def _tensor(self, spec: Any, value: Any) -> Any:
        try:
            return self._tf.constant(value, dtype=spec.dtype)
        except (ValueError, TypeError) as exc:
            raise PredictError(f"cannot convert input {spec.name!r}: {exc}") from exc

    def predict(self, body: Mapping[str, Any]) -> dict[str, Any]:
        sig = self._signature(body.get("signature_name"))
        in_specs: dict[str, Any] = dict(sig.structured_input_signature[1])
        if "instances" in body and "inputs" in body:
            raise PredictError("Request may contain either 'instances' or 'inputs', not both")
        if "instances" in body:
            instances = body["instances"]
            if not isinstance(instances, list) or not instances:
                raise PredictError("'instances' must be a non-empty list")
            if all(isinstance(row, dict) for row in instances):
                columns = {key: [row[key] for row in instances] for key in in_specs if key in instances[0]}
            elif len(in_specs) == 1:
                columns = {next(iter(in_specs)): instances}
            else:
                raise PredictError("instances must be objects when the signature has several inputs")
            outputs = self._run(sig, in_specs, columns)
            if len(outputs) == 1:
                return {"predictions": next(iter(outputs.values())).tolist()}
            rows = len(instances)
            return {"predictions": [{key: v[i].tolist() for key, v in outputs.items()} for i in range(rows)]}
        if "inputs" in body:
            inputs = body["inputs"]
            columns = dict(inputs) if isinstance(inputs, dict) else {next(iter(in_specs)): inputs}
            outputs = self._run(sig, in_specs, columns)
            if len(outputs) == 1:
                return {"outputs": next(iter(outputs.values())).tolist()}
            return {"outputs": {key: v.tolist() for key, v in outputs.items()}}
        raise PredictError("Missing 'inputs' or 'instances' key")

    def _run(self, sig: Any, in_specs: Mapping[str, Any], columns: Mapping[str, Any]) -> dict[str, Any]:
        missing = set(in_specs) - set(columns)
        if missing:
            raise PredictError(f"missing input(s): {', '.join(sorted(missing))}")
        extra = set(columns) - set(in_specs)
        if extra:
            raise PredictError(f"unknown input(s): {', '.join(sorted(extra))}")
        tensors = {key: self._tensor(in_specs[key], columns[key]) for key in in_specs}
        try:
            result = sig(**tensors)
        except (self._tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            raise PredictError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        return {key: value.numpy() for key, value in sorted(result.items())}


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(k.TFS_LATENCY_BUCKETS_US))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(k.TFS_LATENCY_BUCKETS_US):
            if value <= bound:
                self.buckets[i] += 1
        self.count += 1
        self.total += value


def _labels(pairs: Mapping[str, str]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return ",".join(f'{key}="{esc(value)}"' for key, value in pairs.items())


def _num(v: float) -> str:
    return "+Inf" if math.isinf(v) else f"{v:.10g}"


class TfsMetrics:
    """TF Serving's request count and latency, exposed with TF Serving's names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.request_count: dict[tuple[str, str], int] = {}
        self.latency: dict[tuple[str, str, str], _Histogram] = {}

    def record(self, model: str, status: str, api: str, latency_us: float, entrypoint: str = "REST") -> None:
        with self._lock:
            self.request_count[(model, status)] = self.request_count.get((model, status), 0) + 1
            self.latency.setdefault((model, api, entrypoint), _Histogram()).observe(latency_us)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            lines.append(f"# HELP {k.TFS_REQUEST_COUNT} The total number of requests.")
            lines.append(f"# TYPE {k.TFS_REQUEST_COUNT} counter")
            for (model, status), n in sorted(self.request_count.items()):
                labels = _labels({k.TFS_LABEL_MODEL: model, k.TFS_LABEL_STATUS: status})
                lines.append(f"{k.TFS_REQUEST_COUNT}{{{labels}}} {n}")
            name = k.TFS_REQUEST_LATENCY
            lines.append(f"# HELP {name} Distribution of wall time (in microseconds) for TF Serving request.")
            lines.append(f"# TYPE {name} histogram")
            for (model, api, entry), h in sorted(self.latency.items()):
                base = {k.TFS_LABEL_MODEL: model, k.TFS_LABEL_API: api, k.TFS_LABEL_ENTRYPOINT: entry}
                for bound, n in zip(k.TFS_LATENCY_BUCKETS_US, h.buckets, strict=True):
                    lines.append(f"{name}_bucket{{{_labels({**base, 'le': _num(bound)})}}} {n}")
                lines.append(f"{name}_bucket{{{_labels({**base, 'le': '+Inf'})}}} {h.count}")
                lines.append(f"{name}_sum{{{_labels(base)}}} {_num(h.total)}")
                lines.append(f"{name}_count{{{_labels(base)}}} {h.count}")
        return "\n".join(lines) + "\n"


def monitoring_path(config_text: str) -> str | None:
    """The Prometheus path a text-format MonitoringConfig enables, or None (TF Serving's fields:
    ``prometheus_config { enable: true, path: "..." }``; the default path is TF Serving's)."""
    block = re.search(r"prometheus_config\s*\{([^}]*)\}", config_text)
    if not block or not re.search(r"\benable\s*:\s*true\b", block.group(1)):
        return None
    path = re.search(r'\bpath\s*:\s*"([^"]+)"', block.group(1))
    return path.group(1) if path else k.TFS_MONITORING_PATH


_CONFIG_ENTRY = re.compile(r"\bconfig\s*\{([^{}]*)\}")
_FIELD = r'\b{}\s*:\s*"((?:[^"\\]|\\.)*)"'


def parse_model_config(text: str) -> dict[str, str]:
    """Model name -> base path from TF Serving's ModelServerConfig text format (``model_config_list {
    config { name: "..." base_path: "..." } ... }``); the fields this backend uses, nothing else."""
    models: dict[str, str] = {}
    for block in _CONFIG_ENTRY.finditer(text):
        name = re.search(_FIELD.format("name"), block.group(1))
        base = re.search(_FIELD.format("base_path"), block.group(1))
        if not name or not base:
            raise ValueError(f"model config entry without name or base_path: {block.group(0)!r}")
        models[_unquote(name.group(1))] = _unquote(base.group(1))
    if not models and "model_config_list" not in text:
        raise ValueError("not a model config: no model_config_list")
    return models


def _unquote(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


@dataclass
class _Servable:
    """One model of the backend: where it loads from, and what loading gave."""

    base_path: str
    model: LoadedModel | None = None
    error: str | None = None


class LocalBackend:
    """One model (``--model_name``/``--model_base_path``) or several from a model config file
    (``--model_config_file``), re-read every ``poll_seconds`` as TF Serving's
    ``--model_config_file_poll_wait_seconds`` does: a model added to the file is loaded, one removed is
    unloaded (its status then answers 404 and its requests fail), one whose base path changed reloads."""

    def __init__(
        self,
        model_name: str | None,
        model_base_path: str | None,
        metrics_path: str | None = None,
        model_config_file: str | None = None,
        poll_seconds: float = 0.0,
    ) -> None:
        self.metrics_path = metrics_path
        self.model_config_file = model_config_file
        self.poll_seconds = poll_seconds
        self.models: dict[str, _Servable] = {}
        self._lock = threading.Lock()
        if model_name and model_base_path:
            self.models[model_name] = _Servable(model_base_path)
        self.metrics = TfsMetrics()

    def load(self) -> None:
        """Load what is configured and not loaded yet (the config file first, when there is one)."""
        if self.model_config_file:
            self.read_config()
        for name, servable in list(self.models.items()):
            if servable.model is None and servable.error is None:
                self._load_one(name, servable)

    def _load_one(self, name: str, servable: _Servable) -> None:
        try:
            version, path = latest_version(servable.base_path)
            model = LoadedModel(name, version, path)
        except Exception as exc:
            servable.error = f"{type(exc).__name__}: {exc}"
            log.error("cannot load %s from %s: %s", name, servable.base_path, servable.error)
            return
        with self._lock:
            if self.models.get(name) is servable:  # not removed or replaced while it loaded
                servable.model = model
                log.info("loaded %s version %d from %s", name, version, path)

    def read_config(self) -> None:
        """Apply the model config file: new models are added (loaded by `load`), removed ones unloaded.
        An unreadable or malformed file changes nothing, as TF Serving keeps its last good config."""
        assert self.model_config_file is not None
        try:
            with open(self.model_config_file) as f:
                wanted = parse_model_config(f.read())
        except (OSError, ValueError) as exc:
            log.error("model config %s not applied: %s", self.model_config_file, exc)
            return
        with self._lock:
            for name in [n for n in self.models if n not in wanted]:
                del self.models[name]
                log.info("unloaded %s (no longer in the model config)", name)
            for name, base in wanted.items():
                current = self.models.get(name)
                if current is None or current.base_path != base:
                    self.models[name] = _Servable(base)

    def _servable(self, name: str) -> _Servable | None:
        with self._lock:
            return self.models.get(name)

    def _check_model(self, request: web.Request) -> LoadedModel:
        name = request.match_info["name"]
        version = request.match_info.get("version")
        servable = self._servable(name)
        if servable is None:
            raise _error(404, f"Servable not found for request: Latest({name})")
        if servable.model is None:
            raise _error(404 if servable.error else 503, servable.error or f"{name} is still loading")
        if version is not None and int(version) != servable.model.version:
            raise _error(404, f"Servable not found for request: Specific({name}, {version})")
        return servable.model

    async def status(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        servable = self._servable(name)
        if servable is None:
            raise _error(404, f"Could not find any versions of model {name}")
        if servable.model is None:
            if servable.error:
                raise _error(404, f"Could not find any versions of model {name}: {servable.error}")
            entry = {"version": "0", "state": "LOADING", "status": {"error_code": "OK", "error_message": ""}}
        else:
            version = request.match_info.get("version")
            if version is not None and int(version) != servable.model.version:
                raise _error(404, f"Could not find version {version} of model {name}")
            entry = {
                "version": str(servable.model.version),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        return web.json_response({"model_version_status": [entry]})

    async def predict(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        status = "OK"
        known = False
        try:
            model = self._check_model(request)
            known = True
            try:
                body = await request.json()
            except ValueError as exc:
                raise PredictError(f"JSON Parse error: {exc}") from exc
            if not isinstance(body, dict):
                raise PredictError("request body must be a JSON object")
            # TensorFlow releases the GIL during execution; the event loop keeps accepting requests.
            result = await asyncio.to_thread(model.predict, body)
            return web.json_response(result)
        except PredictError as exc:
            status = "INVALID_ARGUMENT"
            raise _error(400, str(exc)) from exc
        except web.HTTPException as exc:
            status = "NOT_FOUND" if exc.status == 404 else "UNAVAILABLE"
            raise
        finally:
            if known:
                elapsed_us = (time.perf_counter() - start) * 1e6
                self.metrics.record(request.match_info["name"], status, "predict", elapsed_us)

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(), content_type="text/plain", charset="utf-8")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models/{name}", self.status)
        app.router.add_get("/v1/models/{name}/versions/{version:\\d+}", self.status)
        app.router.add_post("/v1/models/{name}:predict", self.predict)
        app.router.add_post("/v1/models/{name}/versions/{version:\\d+}:predict", self.predict)
        if self.metrics_path:
            app.router.add_get(self.metrics_path, self.prometheus)
        return app


def _error(status: int, message: str) -> web.HTTPException:
    cls: type[web.HTTPException] = {
        400: web.HTTPBadRequest,
        404: web.HTTPNotFound,
        503: web.HTTPServiceUnavailable,
    }.get(status, web.HTTPInternalServerError)
    return cls(text=f'{{"error": {_json_str(message)}}}', content_type="application/json")


def _json_str(s: str) -> str:
    return json.dumps(s)


async def serve(backend: LocalBackend, host: str, port: int, stop: asyncio.Event) -> None:
    runner = web.AppRunner(backend.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info(
        "local backend listening on %s:%d for %s", host, port, ", ".join(backend.models) or "no model yet"
    )
    # Load after listening, like TF Serving: the status endpoint reports LOADING meanwhile.
    await asyncio.to_thread(backend.load)
    try:
        # TF Serving re-reads the model config file every poll interval (0: never).
        while backend.model_config_file and backend.poll_seconds > 0:
            try:
                await asyncio.wait_for(stop.wait(), timeout=backend.poll_seconds)
            except TimeoutError:
                await asyncio.to_thread(backend.load)
            else:
                break
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="greenserve_agent.local_backend", description=__doc__)
    parser.add_argument("--rest_api_port", type=int, default=8501)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model_name", default=None)
    parser.add_argument("--model_base_path", default=None)
    parser.add_argument("--model_config_file", default=None)
    parser.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0)
    parser.add_argument("--monitoring_config_file", default=None)
    args, ignored = parser.parse_known_args(argv)
    if not args.model_config_file and not (args.model_name and args.model_base_path):
        parser.error("--model_config_file, or --model_name and --model_base_path, are required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if ignored:
        log.info("ignoring TF Serving flags the local backend does not implement: %s", " ".join(ignored))
    metrics_path = None
    if args.monitoring_config_file:
        with open(args.monitoring_config_file) as f:
            metrics_path = monitoring_path(f.read())
    if metrics_path is None:
        log.info(
            "monitoring off: no Prometheus endpoint (--monitoring_config_file enables it, as in TF Serving)"
        )
    backend = LocalBackend(
        None if args.model_config_file else args.model_name,
        args.model_base_path,
        metrics_path,
        args.model_config_file,
        args.model_config_file_poll_wait_seconds,
    )

    async def run() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(backend, args.host, args.rest_api_port, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
