"""The agent in front of the local backend, serving a real SavedModel made here: REST API and /metrics."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from agent_proc import MODEL, AgentProcess, make_saved_model, start_agent
from prometheus_client.parser import text_string_to_metric_families

from greenserve import contract as k

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    root = tmp_path_factory.mktemp("models")
    proc = start_agent(make_saved_model(root), root / "agent.log")
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


def call(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def families(agent: AgentProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{agent.metrics}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def predict(agent: AgentProcess, body: dict[str, Any]) -> tuple[int, Any]:
    return call(f"{agent.rest}/v1/models/{MODEL}:predict", body)


def test_model_status_has_tf_serving_shape(agent: AgentProcess) -> None:
    status, body = call(f"{agent.rest}/v1/models/{MODEL}")
    assert status == 200
    assert body == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert call(f"{agent.rest}/v1/models/{MODEL}/versions/1")[0] == 200
    assert call(f"{agent.rest}/v1/models/{MODEL}/versions/2")[0] == 404
    assert call(f"{agent.rest}/v1/models/nope")[0] == 404


def test_predict_row_format_runs_real_inference(agent: AgentProcess) -> None:
    xs = [round(random.uniform(-100, 100), 3) for _ in range(7)]
    status, body = predict(agent, {"instances": [[x] for x in xs]})
    assert status == 200
    assert [len(row) for row in body["predictions"]] == [1] * len(xs)
    assert [row[0] for row in body["predictions"]] == pytest.approx([2 * x + 1 for x in xs], rel=1e-5)


def test_predict_columnar_format_and_named_signature(agent: AgentProcess) -> None:
    status, body = predict(agent, {"inputs": [[1.5], [-2.0]]})
    assert (status, body) == (200, {"outputs": [[4.0], [-3.0]]})
    status, body = predict(agent, {"signature_name": "two", "inputs": {"a": [1, 2], "b": [3, 4]}})
    assert (status, body) == (200, {"outputs": {"prod": [3.0, 8.0], "sum": [4.0, 6.0]}})
    status, body = predict(agent, {"signature_name": "two", "instances": [{"a": 2, "b": 5}]})
    assert (status, body) == (200, {"predictions": [{"prod": 10.0, "sum": 7.0}]})


def test_bad_requests_are_client_errors(agent: AgentProcess) -> None:
    status, body = predict(agent, {"instances": [["not a number"]]})
    assert status == 400 and "error" in body
    status, body = predict(agent, {"signature_name": "missing", "instances": [[1.0]]})
    assert status == 400 and "missing" in body["error"]
    assert predict(agent, {"nothing": 1})[0] == 400


def _value(fams: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    return sum(
        float(s.value)
        for s in fams[family].samples
        if s.name == sample and all(s.labels.get(key) == v for key, v in labels.items())
    )


def test_metrics_have_documented_names_units_and_types(agent: AgentProcess) -> None:
    fams = families(agent)
    for spec in k.AGENT_METRICS:
        if spec is k.GPU_READ_ERRORS:
            continue  # exported only once a read has failed
        fam = fams.get(spec.family) or fams.get(spec.name)
        assert fam is not None, f"{spec.name} missing"
        expected = "gauge" if spec.type == "info" else spec.type  # text format has no info type
        assert fam.type == expected, spec.name
        assert all(s.name.startswith(spec.family) for s in fam.samples)
    energy = fams[k.GPU_ENERGY.family]
    assert energy.type == "counter"
    assert [s.name for s in energy.samples] == [k.GPU_ENERGY.name]
    power = [s for s in fams[k.GPU_POWER.family].samples]
    assert len(power) == 1 and power[0].labels["simulated"] == "true"
    # The simulated T4 with a resident model draws between its context-idle and serving power.
    assert 26.0 <= power[0].value <= 65.0
    assert fams[k.AGENT_SIMULATED.family].samples[0].value == 1.0
    info = fams[k.AGENT_INFO.name].samples[0].labels  # parsed as a gauge family named like the sample
    assert info["backend"] == "local" and info["model"] == MODEL and info["simulated"] == "true"
    # TF Serving's own families, with TF Serving's names and types.
    assert fams[k.TFS_REQUEST_COUNT].type == "counter"
    assert fams[k.TFS_REQUEST_LATENCY].type == "histogram"


def test_tf_serving_request_count_and_latency_follow_traffic(agent: AgentProcess) -> None:
    before = families(agent)
    n = 5
    for i in range(n):
        assert predict(agent, {"instances": [[float(i)]]})[0] == 200
    assert predict(agent, {"instances": [["x"]]})[0] == 400
    after = families(agent)
    count = k.TFS_REQUEST_COUNT

    def ok(f: dict[str, Any], status: str) -> float:
        return _value(f, count, count + "_total", model_name=MODEL, status=status)

    assert ok(after, "OK") - ok(before, "OK") == n
    assert ok(after, "INVALID_ARGUMENT") - ok(before, "INVALID_ARGUMENT") == 1
    lat = k.TFS_REQUEST_LATENCY
    lat_count = _value(after, lat, lat + "_count", model_name=MODEL, API="predict", entrypoint="REST")
    lat_before = _value(before, lat, lat + "_count", model_name=MODEL, API="predict", entrypoint="REST")
    assert lat_count - lat_before == n + 1
    # Agent-side counter of proxied REST requests by HTTP code.
    agent_ok = _value(after, k.REQUESTS.family, k.REQUESTS.name, model=MODEL, code="200")
    assert agent_ok - _value(before, k.REQUESTS.family, k.REQUESTS.name, model=MODEL, code="200") == n


def test_energy_counter_grows_while_serving(agent: AgentProcess) -> None:
    def energy() -> float:
        return float(families(agent)[k.GPU_ENERGY.family].samples[0].value)

    first = energy()
    for _ in range(20):
        predict(agent, {"instances": [[1.0]] * 64})
    assert energy() > first


def test_ready_endpoint(agent: AgentProcess) -> None:
    status, body = call(f"{agent.metrics}/ready")
    assert status == 200 and body["ready"] is True and body["draining"] is False


def test_request_series_exist_at_zero_once_the_model_loads(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Before any request the model's request counter and latency histogram are exported at 0, so that
    Prometheus has a sample before the first requests: a series that first appears with them loses what
    came before its first scrape to increase() (a window's rate read low, as on CI: 11,623 of 13,095
    requests in tests/integration_prom/test_prometheus_source.py)."""
    root = tmp_path_factory.mktemp("fresh")
    proc = start_agent(make_saved_model(root), root / "agent.log")
    try:
        proc.wait_ready(url=f"{proc.metrics}/ready")  # the agent's own readiness: no request proxied
        fams = families(proc)
        requests = [s for s in fams[k.REQUESTS.family].samples if s.name == k.REQUESTS.name]
        assert [(s.labels, s.value) for s in requests] == [({k.LABEL_MODEL: MODEL, "code": "200"}, 0.0)]
        assert _value(fams, k.REQUEST_DURATION.family, k.REQUEST_DURATION.family + "_count", model=MODEL) == 0
        assert predict(proc, {"instances": [[1.0]] * 8})[0] == 200
        assert _value(families(proc), k.REQUESTS.family, k.REQUESTS.name, model=MODEL, code="200") == 1
    finally:
        assert proc.stop() == 0, proc.log()
