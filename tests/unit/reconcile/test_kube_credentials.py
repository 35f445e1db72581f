"""The operator's kube credentials come from the Kubernetes client's own loaders: a kubeconfig whose user is
an `exec` plugin (as on EKS, GKE and AKS) and in-cluster ServiceAccount config, against a local aiohttp API
server that checks the token. The REST client and kopf's login handler share one source; a 401 makes both
load afresh (the plugin runs again, a rotated token file is read again)."""

from __future__ import annotations

import base64
import datetime
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import kopf
import pytest
import yaml
from aiohttp import web

from greenserve.cluster import credentials
from greenserve.cluster.client import PODS, ApiError, KubeClient, load_kubeconfig
from greenserve.cluster.credentials import KubeAuth, KubeAuthError
from greenserve.handlers.startup import kube_auth, login

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}


@dataclass
class FakeApiServer:
    url: str
    accept: set[str] = field(default_factory=set)  # Authorization values it lets through
    seen: list[str | None] = field(default_factory=list)


async def _serve(port: int, ssl_context: ssl.SSLContext | None = None) -> tuple[FakeApiServer, web.AppRunner]:
    server = FakeApiServer(f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}")

    async def get_pod(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        server.seen.append(auth)
        if auth not in server.accept:
            return web.json_response({"kind": "Status", "reason": "Unauthorized", "code": 401}, status=401)
        return web.json_response(POD)

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/pods/p", get_pod)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    return server, runner


@pytest.fixture
async def apiserver(unused_tcp_port: int) -> AsyncIterator[FakeApiServer]:
    server, runner = await _serve(unused_tcp_port)
    yield server
    await runner.cleanup()


def _exec_plugin(tmp_path: Path, expires_in_s: float | None = 3600.0, fail: bool = False) -> Path:
    """A credential plugin like `aws eks get-token`: prints an ExecCredential whose token counts its runs."""
    script = tmp_path / "get-token"
    expiry = "None" if expires_in_s is None else f"{expires_in_s!r}"
    script.write_text(
        f"#!{sys.executable}\n"
        "import datetime, json, os, pathlib, sys\n"
        f"if {fail!r}:\n"
        "    sys.exit('plugin: no SSO session, run aws sso login')\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['kind'] == 'ExecCredential', info\n"
        f"runs = pathlib.Path({str(tmp_path / 'runs')!r})\n"
        "n = int(runs.read_text()) + 1 if runs.exists() else 1\n"
        "runs.write_text(str(n))\n"
        "status = {'token': f'exec-token-{n}-' + os.environ['CLUSTER_NAME']}\n"
        f"if {expiry} is not None:\n"
        f"    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds={expiry})\n"
        "    status['expirationTimestamp'] = at.strftime('%Y-%m-%dT%H:%M:%SZ')\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',\n"
        "                  'status': status}))\n"
    )
    script.chmod(0o755)
    return script


def _kubeconfig(tmp_path: Path, server: str, plugin: Path) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "eks", "cluster": {"server": server}}],
        "users": [
            {
                "name": "eks-user",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": str(plugin),
                        "args": ["--region", "eu-west-1"],
                        "env": [{"name": "CLUSTER_NAME", "value": "prod"}],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": "eks", "context": {"cluster": "eks", "user": "eks-user"}}],
        "current-context": "eks",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def _runs(tmp_path: Path) -> int:
    return int((tmp_path / "runs").read_text())


async def test_exec_plugin_token_is_sent_and_cached_until_it_expires(
    apiserver: FakeApiServer, tmp_path: Path
) -> None:
    apiserver.accept = {"Bearer exec-token-1-prod"}
    client = KubeClient(load_kubeconfig(_kubeconfig(tmp_path, apiserver.url, _exec_plugin(tmp_path))))
    try:
        assert await client.get(PODS, "p", "ns") == POD
        assert await client.get(PODS, "p", "ns") == POD
    finally:
        await client.close()
    assert apiserver.seen == ["Bearer exec-token-1-prod"] * 2
    assert _runs(tmp_path) == 1  # a valid token is reused, not fetched per request


async def test_expiring_exec_token_is_renewed(apiserver: FakeApiServer, tmp_path: Path) -> None:
    # Expires within the loader's skew: every recheck runs the plugin again.
    plugin = _exec_plugin(tmp_path, expires_in_s=30.0)
    apiserver.accept = {"Bearer exec-token-1-prod", "Bearer exec-token-2-prod"}
    client = KubeClient(KubeAuth(_kubeconfig(tmp_path, apiserver.url, plugin), recheck_s=0.0))
    try:
        await client.get(PODS, "p", "ns")
        await client.get(PODS, "p", "ns")
    finally:
        await client.close()
    assert apiserver.seen == ["Bearer exec-token-1-prod", "Bearer exec-token-2-prod"]


async def test_rejected_token_runs_the_plugin_again_and_retries_once(
    apiserver: FakeApiServer, tmp_path: Path
) -> None:
    # The token claims an hour of validity, but the API server revoked it.
    apiserver.accept = {"Bearer exec-token-2-prod"}
    client = KubeClient(load_kubeconfig(_kubeconfig(tmp_path, apiserver.url, _exec_plugin(tmp_path))))
    try:
        assert await client.get(PODS, "p", "ns") == POD
        apiserver.accept = set()
        with pytest.raises(ApiError) as err:  # still 401 after one fresh attempt: an error, not a loop
            await client.get(PODS, "p", "ns")
    finally:
        await client.close()
    assert err.value.status == 401
    assert apiserver.seen == [
        "Bearer exec-token-1-prod",
        "Bearer exec-token-2-prod",
        "Bearer exec-token-2-prod",
        "Bearer exec-token-3-prod",
    ]


async def test_a_failing_plugin_is_a_clear_error(tmp_path: Path) -> None:
    auth = load_kubeconfig(_kubeconfig(tmp_path, "http://127.0.0.1:9", _exec_plugin(tmp_path, fail=True)))
    with pytest.raises(KubeAuthError, match="run aws sso login"):
        await auth.credentials()


async def test_kopf_logs_in_with_the_same_source(
    apiserver: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path, apiserver.url, _exec_plugin(tmp_path))))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    memo = kopf.Memo()
    info = await login(memo=memo)
    assert (info.server, info.scheme, info.token) == (apiserver.url, "Bearer", "exec-token-1-prod")
    assert info.expiration is not None
    in_an_hour = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    assert abs((info.expiration - in_an_hour).total_seconds()) < 120
    # The REST client the startup handler builds asks the very same source: no second plugin run.
    apiserver.accept = {"Bearer exec-token-1-prod"}
    client = KubeClient(kube_auth(memo))
    try:
        assert await client.get(PODS, "p", "ns") == POD
    finally:
        await client.close()
    assert client.auth is memo["kube_auth"] and _runs(tmp_path) == 1


async def test_kopf_login_error_names_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kopf.LoginError, match="Kubernetes credentials"):
        await login(memo=kopf.Memo())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "1", "-subj", "/CN=kubernetes",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return d / "cert.pem", d / "key.pem"


async def test_in_cluster_service_account_and_token_rotation(
    unused_tcp_port: int, tls_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_files
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "ca.crt").write_bytes(cert.read_bytes())
    (sa / "token").write_text("sa-token-1")
    monkeypatch.setattr(credentials, "SA_DIR", sa)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(unused_tcp_port))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server, runner = await _serve(unused_tcp_port, ctx)
    client = KubeClient()  # no kubeconfig: in-cluster, verified against the ServiceAccount's CA
    try:
        server.accept = {"Bearer sa-token-1"}
        assert await client.get(PODS, "p", "ns") == POD
        # The kubelet rotates the projected token; the old one stops working.
        (sa / "token").write_text("sa-token-2")
        server.accept = {"Bearer sa-token-2"}
        assert await client.get(PODS, "p", "ns") == POD
    finally:
        await client.close()
        await runner.cleanup()
    assert server.seen == ["Bearer sa-token-1", "Bearer sa-token-1", "Bearer sa-token-2"]
    creds = await KubeAuth().credentials()
    assert creds.server == f"https://127.0.0.1:{unused_tcp_port}" and creds.ca_file == str(sa / "ca.crt")


async def test_kubeconfig_token_file_and_client_certificate(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    """The local control plane's kinds of kubeconfig users (client certificate data, a token file relative
    to the kubeconfig) load through the same loader."""
    cert, key = tls_files
    (tmp_path / "token").write_text("file-token\n")
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": "https://127.0.0.1:6443/", "insecure-skip-tls-verify": True}}
        ],
        "users": [
            {"name": "t", "user": {"tokenFile": "token"}},
            {
                "name": "x509",
                "user": {
                    "client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
                    "client-key-data": base64.b64encode(key.read_bytes()).decode(),
                },
            },
        ],
        "contexts": [
            {"name": "t", "context": {"cluster": "c", "user": "t"}},
            {"name": "x509", "context": {"cluster": "c", "user": "x509"}},
        ],
        "current-context": "t",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(cfg))
    creds = await load_kubeconfig(path).credentials()
    assert creds.server == "https://127.0.0.1:6443" and creds.authorization == "Bearer file-token"
    assert creds.insecure
    x509 = await load_kubeconfig(path, context="x509").credentials()
    assert x509.authorization is None and x509.cert_file and x509.key_file
    assert _read(x509.cert_file) == _read(cert)
