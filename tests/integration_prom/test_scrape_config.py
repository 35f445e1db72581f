"""The documented Kubernetes scrape config's relabelling, run by a real Prometheus.

Debian's Prometheus is built without Kubernetes service discovery, so the test feeds the same
``__meta_kubernetes_*`` labels through static targets and reads back what relabelling made of them.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import prom_server
import pytest

from greenserve import contract as k

pytestmark = pytest.mark.prometheus


def _meta(scrape: str, modelservice: str | None, pod: str, pool: str | None = None) -> dict[str, str]:
    labels = {
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": scrape,
        "__meta_kubernetes_pod_annotation_prometheus_io_port": str(k.AGENT_METRICS_PORT),
        "__meta_kubernetes_namespace": "ml",
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_node_name": "gpu-node-1",
    }
    if modelservice:
        labels[k.SD_POD_LABEL_MODELSERVICE] = modelservice
    if pool:
        labels[k.SD_POD_LABEL_POOL] = pool
    return labels


def test_kubernetes_pod_scrape_config_relabels_to_contract_labels(tmp_path: Path) -> None:
    binary = prom_server.find_or_install()
    if binary is None:
        pytest.skip("Debian's prometheus package is not installed and cannot be installed here")
    job = k.kubernetes_pod_scrape_config()
    job.pop("kubernetes_sd_configs")
    job["static_configs"] = [
        {"targets": ["10.1.2.3:8501"], "labels": _meta("true", "svc-a", "svc-a-abc")},
        {"targets": ["10.1.2.4:8501"], "labels": _meta("false", "svc-a", "not-annotated")},
        {"targets": ["10.1.2.5:8501"], "labels": _meta("true", None, "not-greenserve")},
        # A shared pool's pod: no ModelService label, its pool's instead.
        {"targets": ["10.1.2.6:8501"], "labels": _meta("true", None, "gs-pool-1-x", pool="gs-pool-1")},
    ]
    prom = prom_server.start(binary, tmp_path, [job])
    try:
        body: dict[str, Any] = {}
        for _ in range(50):
            with urllib.request.urlopen(f"{prom.url}/api/v1/targets?state=any", timeout=5) as resp:
                body = json.loads(resp.read())
            if body["data"]["activeTargets"]:
                break
            time.sleep(0.2)
    finally:
        prom.stop()
    active = sorted(body["data"]["activeTargets"], key=lambda t: t["scrapeUrl"])
    assert len(active) == 2, body
    pool = active[1]["labels"]
    assert active[1]["scrapeUrl"] == f"http://10.1.2.6:{k.AGENT_METRICS_PORT}/metrics"
    assert (pool[k.LABEL_POOL], pool[k.LABEL_POD]) == ("gs-pool-1", "gs-pool-1-x")
    assert k.LABEL_MODELSERVICE not in pool
    labels = active[0]["labels"]
    assert active[0]["scrapeUrl"] == f"http://10.1.2.3:{k.AGENT_METRICS_PORT}/metrics"
    assert labels[k.LABEL_NAMESPACE] == "ml"
    assert labels[k.LABEL_POD] == "svc-a-abc"
    assert labels[k.LABEL_NODE] == "gpu-node-1"
    assert labels[k.LABEL_MODELSERVICE] == "svc-a" and k.LABEL_POOL not in labels
    assert len(body["data"]["droppedTargets"]) == 2
