"""The agent bounds what one client can take (issues 15 and 17): request bodies past a limit get a 413
without being buffered, and idle or slow connections past the cap cannot starve readiness, metrics or
predictions. The agent runs as a subprocess with a low file-descriptor limit, as a container may."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from agent_proc import MODEL, AgentProcess, make_saved_model, start_agent
from prometheus_client.parser import text_string_to_metric_families

from greenserve_agent.limits import FD_RESERVE, fd_budget_cap
from greenserve_agent.supervisor import DEFAULT_MAX_BODY_BYTES

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow, pytest.mark.timeout(300)]

NOFILE = 512  # the agent's descriptor limit: its front may hold (512 - FD_RESERVE) / 2 connections
CAP = (NOFILE - FD_RESERVE) // 2
MIB = 1 << 20
HEADER_TIMEOUT_S = 3.0
IDLE_TIMEOUT_S = 6.0


def test_the_cap_leaves_room_within_the_descriptor_limit() -> None:
    assert fd_budget_cap(1024, soft_limit=1024) == (1024 - FD_RESERVE) // 2
    assert fd_budget_cap(100, soft_limit=1 << 20) == 100  # the configured cap when descriptors abound
    assert fd_budget_cap(1024, soft_limit=FD_RESERVE) == 1  # never zero
    assert 2 * fd_budget_cap(5000, soft_limit=4096) + FD_RESERVE <= 4096


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    root = tmp_path_factory.mktemp("models")
    proc = start_agent(
        make_saved_model(root),
        root / "agent.log",
        f"--agent-header-timeout={HEADER_TIMEOUT_S}",
        f"--agent-idle-timeout={IDLE_TIMEOUT_S}",
        nofile=NOFILE,
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    assert m, field
    return int(m.group(1)) * 1024


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _predict(agent: AgentProcess) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{agent.rest}/v1/models/{MODEL}:predict",
        data=json.dumps({"instances": [[1.0], [2.0]]}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


def _metric(agent: AgentProcess, name: str, **labels: str) -> float:
    status, text = _get(f"{agent.metrics}/metrics")
    assert status == 200
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def _all_answer(agent: AgentProcess) -> None:
    """Readiness (the kubelet's probe on the REST port and the agent's /ready), metrics and a prediction."""
    assert _get(f"{agent.rest}/v1/models/{MODEL}")[0] == 200
    assert _get(f"{agent.metrics}/ready")[0] == 200
    status, text = _get(f"{agent.metrics}/metrics")
    assert status == 200 and b"greenserve_agent_ready 1.0" in text
    assert _predict(agent) == (200, {"predictions": [[3.0], [5.0]]})


# --- bounded request bodies ------------------------------------------------------------------------


def test_a_declared_oversized_body_gets_a_413_before_it_is_sent(agent: AgentProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", agent.rest_port, timeout=10)
    conn.putrequest("POST", f"/v1/models/{MODEL}:predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(900 * MIB))
    conn.endheaders()  # not one byte of the body: the answer comes from the Content-Length alone
    resp = conn.getresponse()
    assert resp.status == 413
    assert str(DEFAULT_MAX_BODY_BYTES) in json.loads(resp.read())["error"]
    conn.close()


def test_a_chunked_body_over_the_limit_gets_a_413_and_is_never_buffered(agent: AgentProcess) -> None:
    before = _metric(agent, "greenserve_requests_total", code="413")
    conn = http.client.HTTPConnection("127.0.0.1", agent.rest_port, timeout=60)
    conn.putrequest("POST", f"/v1/models/{MODEL}:predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b"[" + b"1.0," * (MIB // 4 - 1) + b"1]"
    sent = 0
    try:
        while sent < 300 * MIB:  # no Content-Length: the agent can only count as it reads
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the agent may stop reading once it has answered
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()
    assert _metric(agent, "greenserve_requests_total", code="413") == before + 1
    # The agent's peak RSS over its whole life, this body included, stays under the limit + 100 MB.
    peak = _status_kib(agent.proc.pid, "VmHWM")
    print(f"agent peak RSS {peak / MIB:.1f} MiB after a {sent / MIB:.0f} MiB chunked body")
    assert peak < DEFAULT_MAX_BODY_BYTES + 100 * 10**6
    _all_answer(agent)


# --- an agent a client cannot starve ---------------------------------------------------------------


def test_idle_and_slow_connections_past_the_cap_and_the_fd_limit_starve_nothing(agent: AgentProcess) -> None:
    """More idle connections than the cap (and than the agent's descriptor limit), half of them
    trickling an incomplete request header: readiness, metrics and a prediction still answer."""
    with ExitStack() as stack:
        for i in range(NOFILE + 200):
            s = stack.enter_context(socket.create_connection(("127.0.0.1", agent.rest_port), timeout=10))
            if i % 2:
                s.sendall(b"GET /v1/models/" + MODEL.encode() + b" HTTP/1.1\r\nHost: x\r\n")  # never ends
        for _ in range(100):
            stack.enter_context(socket.create_connection(("127.0.0.1", agent.metrics_port), timeout=10))
        _all_answer(agent)
        assert _open_fds(agent.proc.pid) < NOFILE
    assert "Too many open files" not in agent.log()
    _all_answer(agent)


def test_past_the_cap_with_every_connection_busy_a_clear_503(agent: AgentProcess) -> None:
    """Every front connection busy in a request (here: a body that never comes): the next connection
    gets a 503 at once, not a hang; the metrics port, apart from the front, still answers."""
    log = agent.log()
    m = re.search(r"at most (\d+) connections", log)
    assert m and int(m.group(1)) == CAP, log
    with ExitStack() as stack:
        for _ in range(CAP):
            s = stack.enter_context(socket.create_connection(("127.0.0.1", agent.rest_port), timeout=10))
            s.sendall(
                b"POST /v1/models/" + MODEL.encode() + b":predict HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
        deadline = time.monotonic() + 30
        while _metric(agent, "greenserve_agent_inflight_requests") < CAP:
            assert time.monotonic() < deadline, "the requests did not all reach the agent"
            time.sleep(0.2)
        status, body = _get(f"{agent.rest}/v1/models/{MODEL}", timeout=5)
        assert status == 503 and b"too many connections" in body
        assert _get(f"{agent.metrics}/ready")[0] == 200
    deadline = time.monotonic() + 30
    while _metric(agent, "greenserve_agent_inflight_requests") > 0:  # the clients went away
        assert time.monotonic() < deadline
        time.sleep(0.2)
    _all_answer(agent)


def _closed_after(s: socket.socket, deadline_s: float) -> float:
    """Seconds until the agent closes `s` (EOF or reset); fails past `deadline_s`."""
    start = time.monotonic()
    s.settimeout(deadline_s)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the agent kept the connection open for {deadline_s} s")
    return time.monotonic() - start


def test_slow_headers_and_idle_connections_are_closed(agent: AgentProcess) -> None:
    with socket.create_connection(("127.0.0.1", agent.rest_port), timeout=10) as slow:
        slow.sendall(b"GET /v1/models/" + MODEL.encode() + b" HTTP/1.1\r\nHost: x\r\n")  # no blank line
        took = _closed_after(slow, HEADER_TIMEOUT_S + 10)
        assert HEADER_TIMEOUT_S - 0.5 <= took < IDLE_TIMEOUT_S - 1  # the header timeout, not the idle one
    with socket.create_connection(("127.0.0.1", agent.metrics_port), timeout=10) as idle:
        took = _closed_after(idle, IDLE_TIMEOUT_S + 10)  # never sends a byte
        assert took >= IDLE_TIMEOUT_S - 0.5
