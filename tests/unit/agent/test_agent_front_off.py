"""The agent without its REST front (``--agent-front=off``): the model server answers REST itself, the agent
owns readiness on /ready, passes TF Serving's request metrics through and drains on TF Serving's counter."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_proc import MODEL, AgentProcess, make_saved_model, sigterm_under_load, start_agent
from prometheus_client.parser import text_string_to_metric_families

from greenserve import contract as k

PROPAGATION_S = 1.0
pytestmark = [pytest.mark.tensorflow, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_saved_model(tmp_path_factory.mktemp("models"))


@pytest.fixture
def agent(base: Path, tmp_path: Path) -> Iterator[AgentProcess]:
    proc = start_agent(
        base,
        tmp_path / "agent.log",
        "--agent-front=off",
        "--agent-drain-quiet=0.5",
        "--agent-drain-timeout=30",
    )
    try:
        proc.wait_ready(url=f"{proc.metrics}{k.AGENT_READY_PATH}")
        yield proc
    finally:
        proc.stop()


def test_model_server_answers_rest_and_the_agent_exports_its_metrics(agent: AgentProcess) -> None:
    req = urllib.request.Request(
        f"{agent.rest}/v1/models/{MODEL}:predict",
        data=json.dumps({"instances": [[1.0], [2.0]]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    for _ in range(3):
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["predictions"] == [[3.0], [5.0]]
    # The local backend answered on the REST port itself: no agent process between.
    assert "no REST front" in agent.log()
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"{agent.metrics}/metrics", timeout=10) as r:
            families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        tfs = families.get(k.TFS_REQUEST_COUNT)
        counted = sum(s.value for s in tfs.samples) if tfs else 0
        if counted >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counted == 3  # TF Serving's own counter, passed through
    # The front's series are absent, not zero: the operator reads TF Serving's counter instead.
    assert k.REQUESTS.family not in families and k.AGENT_INFLIGHT.family not in families
    assert k.GPU_POWER.family in families and k.AGENT_READY.family in families


async def test_sigterm_under_load_loses_no_request(agent: AgentProcess) -> None:
    # Readiness from the agent's /ready; the removal takes a while to reach every proxy, and requests
    # keep coming meanwhile.
    run = await sigterm_under_load(
        agent, f"{agent.metrics}{k.AGENT_READY_PATH}", clients=16, propagation_s=PROPAGATION_S
    )
    results, sigterm_at, code = run.results, run.sigterm_at, run.exit_code
    failures = [r for r in results if r[1] != 200]
    assert not failures, f"{len(failures)} lost: {failures[:5]}\n{agent.log()}"
    assert len(results) > 20
    # Requests sent after SIGTERM, while the removal propagated, were answered.
    assert any(t > sigterm_at + PROPAGATION_S / 2 for t, _ in results)
    assert code == 0, agent.log()
    assert "draining without the front" in agent.log()
