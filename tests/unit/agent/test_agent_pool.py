"""The agent serving several models from a model config file, as a shared pool pod runs it: models added
to the file are loaded, models removed are unloaded, with TF Serving's REST API and per-model metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_proc import AgentProcess, free_ports, make_saved_model
from prometheus_client.parser import text_string_to_metric_families

from greenserve import contract as k
from greenserve.manifests import pools
from greenserve_agent.local_backend import parse_model_config
from greenserve_agent.supervisor import model_of, parse_args

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow, pytest.mark.timeout(300)]


def write_config(path: Path, models: dict[str, Path]) -> None:
    members = [pools.PoolMember(f"svc-{n}", "uid", n, str(p)) for n, p in models.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(pools.model_config(members))
    tmp.replace(path)  # atomically, as the kubelet swaps a ConfigMap volume's files


def call(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except (urllib.error.URLError, ConnectionError):
        return 0, None  # not listening yet


def state(agent: AgentProcess, name: str) -> str | None:
    code, body = call(f"{agent.rest}/v1/models/{name}")
    if code != 200:
        return None
    return str(body["model_version_status"][0]["state"])


def until(probe: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.1)
    raise AssertionError(f"not after {timeout} s")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    first = make_saved_model(root, "a")
    for name in ("b", "c"):  # the same SavedModel under other names: loading is what is tested
        shutil.copytree(first, root / name)
    return {n: root / n for n in ("a", "b", "c")}


@pytest.fixture
def pool_agent(tmp_path: Path, store: dict[str, Path]) -> Iterator[tuple[AgentProcess, Path]]:
    config = tmp_path / "models.config"
    write_config(config, {"a": store["a"], "b": store["b"]})
    rest, metrics = free_ports(2)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "MODEL_NAME": "ignored"}
    cmd = [
        sys.executable, "-m", "greenserve_agent",
        "--port=0", f"--rest_api_port={rest}", f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=0.5",
        f"--agent-metrics-port={metrics}", "--agent-host=127.0.0.1", "--agent-backend=local",
        "--agent-simulate=true",
    ]  # fmt: skip
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    agent = AgentProcess(proc, rest, metrics, log)
    try:
        yield agent, config
    finally:
        assert agent.stop() == 0, agent.log()


def test_models_follow_the_config_file(pool_agent: tuple[AgentProcess, Path], store: dict[str, Path]) -> None:
    agent, config = pool_agent
    until(lambda: state(agent, "a") == "AVAILABLE" and state(agent, "b") == "AVAILABLE", 120)
    assert call(f"{agent.metrics}/ready")[0] == 200
    for name in ("a", "b"):
        code, out = call(f"{agent.rest}/v1/models/{name}:predict", {"instances": [[1.0], [2.5]]})
        assert (code, out) == (200, {"predictions": [[3.0], [6.0]]})
    assert call(f"{agent.rest}/v1/models/c")[0] == 404

    # c added, b removed: c loads, b is unloaded (its status and its requests answer 404), a stays.
    write_config(config, {"a": store["a"], "c": store["c"]})
    until(lambda: state(agent, "c") == "AVAILABLE" and state(agent, "b") is None, 60)
    assert call(f"{agent.rest}/v1/models/b:predict", {"instances": [[1.0]]})[0] == 404
    assert call(f"{agent.rest}/v1/models/a:predict", {"instances": [[0.0]]}) == (
        200,
        {"predictions": [[1.0]]},
    )
    assert call(f"{agent.rest}/v1/models/c:predict", {"instances": [[0.0]]}) == (
        200,
        {"predictions": [[1.0]]},
    )

    # An empty pool is a valid config: everything is unloaded, the server stays up and Ready.
    write_config(config, {})
    until(lambda: state(agent, "a") is None and state(agent, "c") is None, 60)
    assert call(f"{agent.metrics}/ready")[0] == 200

    # Per-model request series (the energy split's busy time), and no series for unknown paths.
    with urllib.request.urlopen(f"{agent.metrics}/metrics", timeout=10) as resp:
        fams = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    counted = {s.labels[k.LABEL_MODEL] for s in fams[k.REQUESTS.family].samples}
    assert {"a", "c"} <= counted and "b" in counted
    durations = {
        s.labels[k.LABEL_MODEL]: s.value
        for s in fams[k.REQUEST_DURATION.family].samples
        if s.name.endswith("_sum")
    }
    assert durations["a"] > 0 and durations["c"] > 0


def request_series(agent: AgentProcess) -> dict[tuple[str, str], float]:
    """(model, metric) -> value: each model's request counter (code 200) and latency count."""
    with urllib.request.urlopen(f"{agent.metrics}/metrics", timeout=10) as resp:
        fams = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    out: dict[tuple[str, str], float] = {}
    for s in fams[k.REQUESTS.family].samples:
        if s.name == k.REQUESTS.name and s.labels["code"] == "200":
            out[(s.labels[k.LABEL_MODEL], "requests")] = s.value
    for s in fams[k.REQUEST_DURATION.family].samples:
        if s.name == k.REQUEST_DURATION.family + "_count":
            out[(s.labels[k.LABEL_MODEL], "count")] = s.value
    return out


def test_each_pool_model_exports_its_request_series_at_zero_once_loaded(
    pool_agent: tuple[AgentProcess, Path], store: dict[str, Path]
) -> None:
    """A pool's model has its request counter and latency histogram at 0 from its load, before any
    request, as a single model's do (test_agent_serving.py): Prometheus' increase() loses the requests
    before a series' first sample, so a model's first window on a pool GPU would read low."""
    agent, config = pool_agent
    # Only the metrics port is read until the last predict: a status GET through the front is a request.
    zero = {(m, what): 0.0 for m in ("a", "b") for what in ("requests", "count")}
    until(lambda: call(f"{agent.metrics}/ready")[0] == 200 and request_series(agent) == zero, 120)

    # A model added to the running pool: its series appear at 0 once it loads, not at its first request.
    write_config(config, {"a": store["a"], "b": store["b"], "c": store["c"]})
    until(lambda: ("c", "requests") in request_series(agent), 60)
    assert request_series(agent) == {**zero, ("c", "requests"): 0.0, ("c", "count"): 0.0}
    # It is AVAILABLE then: the first request is answered and counted.
    answer = call(f"{agent.rest}/v1/models/c:predict", {"instances": [[0.0]]})
    assert answer == (200, {"predictions": [[1.0]]})
    assert request_series(agent)[("c", "requests")] == 1.0


def test_a_malformed_config_changes_nothing(pool_agent: tuple[AgentProcess, Path]) -> None:
    agent, config = pool_agent
    until(lambda: state(agent, "a") == "AVAILABLE", 120)
    config.write_text("model_config_list { config { name: 'x' } }")
    time.sleep(1.5)  # three poll intervals: nothing may change, so there is no event to wait for
    assert state(agent, "a") == "AVAILABLE" and state(agent, "b") == "AVAILABLE"


def test_parse_model_config_and_flags() -> None:
    assert parse_model_config('model_config_list {\n config { name: "m" base_path: "/p" }\n}') == {"m": "/p"}
    assert parse_model_config("model_config_list {\n}\n") == {}
    with pytest.raises(ValueError, match="without name or base_path"):
        parse_model_config('model_config_list { config { name: "m" } }')
    with pytest.raises(ValueError, match="not a model config"):
        parse_model_config("")
    cfg = parse_args(["--model_config_file=/etc/x", "--model_config_file_poll_wait_seconds=2"])
    assert (cfg.model_name, cfg.model_base_path, cfg.model_config_file, cfg.model_config_poll_s) == (
        None,
        None,
        "/etc/x",
        2.0,
    )
    with pytest.raises(SystemExit):
        parse_args(["--model_config_file=/etc/x", "--model_name=m"])
    assert model_of("/v1/models/m:predict") == "m"
    assert model_of("/v1/models/m/versions/3:predict") == "m"
    assert model_of("/v1/models/m") == "m" and model_of("/metrics") is None
