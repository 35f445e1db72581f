"""PrometheusSource against a local aiohttp server: the bearer token (re-read when rotated), basic auth,
extra headers and TLS (CA bundle, insecure-skip-verify) reach the wire; a credential that cannot be read
makes the metrics missing (scaling holds), never a crash."""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from greenserve.config import OperatorConfig
from greenserve.handlers.startup import prometheus_auth
from greenserve.metrics.prometheus import PrometheusAuth, PrometheusError, PrometheusSource


@dataclass
class FakeProm:
    url: str
    seen: list[dict[str, str]] = field(default_factory=list)
    require: str | None = None  # an Authorization value the server insists on (401 otherwise)


async def _start(port: int, ssl_context: ssl.SSLContext | None = None) -> tuple[FakeProm, web.AppRunner]:
    scheme = "https" if ssl_context else "http"
    prom = FakeProm(f"{scheme}://127.0.0.1:{port}")

    async def query(request: web.Request) -> web.Response:
        prom.seen.append(dict(request.headers))
        if prom.require is not None and request.headers.get("Authorization") != prom.require:
            return web.Response(status=401, text="Unauthorized")
        body = {"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [1.0, "42"]}
        ]}}  # fmt: skip
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/api/v1/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    return prom, runner


@pytest.fixture
async def prom(unused_tcp_port: int) -> AsyncIterator[FakeProm]:
    server, runner = await _start(unused_tcp_port)
    yield server
    await runner.cleanup()


async def _query(url: str, auth: PrometheusAuth) -> float:
    source = PrometheusSource(url, auth=auth)
    try:
        return (await source.query("up"))[0].value
    finally:
        await source.close()


async def test_bearer_token_is_sent_and_reread_when_the_file_is_rotated(
    prom: FakeProm, tmp_path: Path
) -> None:
    # Kubernetes rotates a mounted Secret or projected token by swapping a symlink: do the same.
    (tmp_path / "v1").write_text("token-one\n")
    (tmp_path / "v2").write_text("token-two\n")
    link = tmp_path / "token"
    link.symlink_to(tmp_path / "v1")
    source = PrometheusSource(prom.url, auth=PrometheusAuth(bearer_token_file=str(link)))
    try:
        prom.require = "Bearer token-one"
        assert (await source.query("up"))[0].value == 42.0
        tmp_link = tmp_path / "token.tmp"
        tmp_link.symlink_to(tmp_path / "v2")
        os.replace(tmp_link, link)
        prom.require = "Bearer token-two"
        assert (await source.query("up"))[0].value == 42.0
    finally:
        await source.close()
    assert [h["Authorization"] for h in prom.seen] == ["Bearer token-one", "Bearer token-two"]


async def test_basic_auth_password_from_a_file(prom: FakeProm, tmp_path: Path) -> None:
    (tmp_path / "password").write_text("s3cret:with colon\n")
    expected = "Basic " + base64.b64encode(b"greenserve:s3cret:with colon").decode()
    prom.require = expected
    auth = PrometheusAuth(username="greenserve", password_file=str(tmp_path / "password"))
    assert await _query(prom.url, auth) == 42.0
    assert prom.seen[-1]["Authorization"] == expected


async def test_extra_headers_are_sent(prom: FakeProm) -> None:
    auth = PrometheusAuth(headers=(("X-Scope-OrgID", "tenant-1"), ("X-Extra", "a b")))
    assert await _query(prom.url, auth) == 42.0
    assert prom.seen[-1]["X-Scope-OrgID"] == "tenant-1" and prom.seen[-1]["X-Extra"] == "a b"
    assert "Authorization" not in prom.seen[-1]


async def test_rejected_credentials_are_a_clear_error(prom: FakeProm, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("wrong")
    prom.require = "Bearer right"
    with pytest.raises(PrometheusError, match="HTTP 401"):
        await _query(prom.url, PrometheusAuth(bearer_token_file=str(tmp_path / "token")))


async def test_unreadable_token_means_missing_metrics_not_a_crash(prom: FakeProm, tmp_path: Path) -> None:
    source = PrometheusSource(prom.url, auth=PrometheusAuth(bearer_token_file=str(tmp_path / "absent")))
    try:
        metrics = await source.service_metrics("ns", "svc")
    finally:
        await source.close()
    assert metrics.missing == ("prometheus",) and metrics.requests_per_s is None
    assert prom.seen == []  # nothing was sent without the credential


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "1", "-subj", "/CN=prometheus",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return d / "cert.pem", d / "key.pem"


async def test_tls_with_a_ca_bundle_and_insecure_skip_verify(
    unused_tcp_port: int, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server, runner = await _start(unused_tcp_port, ctx)
    try:
        with pytest.raises(PrometheusError, match="certificate"):  # the system CAs do not know it
            await _query(server.url, PrometheusAuth())
        assert await _query(server.url, PrometheusAuth(ca_file=str(cert))) == 42.0
        assert await _query(server.url, PrometheusAuth(insecure_skip_verify=True)) == 42.0
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bearer_token_file": "/t", "username": "u", "password_file": "/p"}, "not both"),
        ({"username": "u"}, "both a username and a password file"),
        ({"password_file": "/p"}, "both a username and a password file"),
        ({"ca_file": "/ca", "insecure_skip_verify": True}, "contradict"),
        ({"headers": (("X Bad", "v"),)}, "not a valid HTTP header"),
        ({"headers": (("X-Ok", "a\r\nInjected: 1"),)}, "not a valid HTTP header"),
        ({"bearer_token_file": "/t", "headers": (("Authorization", "x"),)}, "Authorization"),
    ],
)
def test_contradictory_auth_is_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrometheusAuth(**kwargs)  # type: ignore[arg-type]


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "GREENSERVE_PROMETHEUS_URL": "https://prom:9090",
        "GREENSERVE_PROMETHEUS_USERNAME": "greenserve",
        "GREENSERVE_PROMETHEUS_PASSWORD_FILE": "/etc/greenserve/prometheus/password/password",
        "GREENSERVE_PROMETHEUS_CA_FILE": "/etc/greenserve/prometheus/ca/ca.crt",
        "GREENSERVE_PROMETHEUS_HEADERS": json.dumps({"X-Scope-OrgID": "team-a"}),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    auth = prometheus_auth(OperatorConfig.from_env())
    assert auth == PrometheusAuth(
        username="greenserve",
        password_file="/etc/greenserve/prometheus/password/password",
        ca_file="/etc/greenserve/prometheus/ca/ca.crt",
        headers=(("X-Scope-OrgID", "team-a"),),
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GREENSERVE_PROMETHEUS_HEADERS", "X-Scope-OrgID: a", "GREENSERVE_PROMETHEUS_HEADERS: not JSON"),
        ("GREENSERVE_PROMETHEUS_HEADERS", '{"X-Scope-OrgID": 1}', "string header names to string values"),
        ("GREENSERVE_PROMETHEUS_INSECURE_SKIP_VERIFY", "maybe", "expected true or false"),
    ],
)
def test_bad_env_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        OperatorConfig.from_env()
