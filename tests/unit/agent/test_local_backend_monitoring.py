"""The local backend exports TF Serving's Prometheus endpoint only when a monitoring config enables it, as
TF Serving does: the CPU test image must not hide a missing --monitoring_config_file."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from greenserve import contract as k
from greenserve_agent.local_backend import LocalBackend, main, monitoring_path
from support.http import local_server

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (k.TFS_MONITORING_CONFIG, k.TFS_MONITORING_PATH),
        ((REPO / "serving-image/monitoring.config").read_text(), k.TFS_MONITORING_PATH),
        ('prometheus_config {\n  enable: true\n  path: "/m"\n}\n', "/m"),
        ("prometheus_config { enable: true }", k.TFS_MONITORING_PATH),
        ('prometheus_config {\n  enable: false,\n  path: "/m"\n}\n', None),
        ("", None),
    ],
)
def test_monitoring_path(text: str, path: str | None) -> None:
    assert monitoring_path(text) == path


@pytest.mark.parametrize("metrics_path", [None, k.TFS_MONITORING_PATH])
async def test_endpoint_exists_only_when_enabled(metrics_path: str | None) -> None:
    backend = LocalBackend("m", "/nonexistent", metrics_path)
    async with (
        local_server(backend.app()) as port,
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{k.TFS_MONITORING_PATH}") as r,
    ):
        body = await r.text()
    if metrics_path is None:
        assert r.status == 404
    else:
        assert r.status == 200 and k.TFS_REQUEST_COUNT in body


def test_unreadable_config_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        main(["--model_name=m", "--model_base_path=/x", f"--monitoring_config_file={tmp_path / 'missing'}"])
