"""Shared GPU pools: the API fields, the pool's objects and the Service's selector (pure builders)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from greenserve.api import constants as c
from greenserve.api.quantity import parse_quantity
from greenserve.api.v1alpha1 import GpuSharing, effective_sharing, parse_spec
from greenserve.manifests import builders, pools

OWNER = builders.Owner(name="small-a", namespace="ml", uid="u-a")


def spec(**overrides: Any) -> Any:
    raw: dict[str, Any] = {
        "model": {"name": "a", "storageUri": "pvc://models/a"},
        "gpu": {"count": 1, "memory": "2Gi"},
    }
    raw.update(overrides)
    return parse_spec(raw)


def members() -> list[pools.PoolMember]:
    return [
        pools.PoolMember("small-b", "u-b", "b", "pvc://models/b"),
        pools.PoolMember("small-a", "u-a", "a", "pvc://models/a/"),
        pools.PoolMember("small-c", "u-c", "c", "pvc://other/c"),
        pools.PoolMember("small-d", "u-d", "d", "gs://bucket/d"),
    ]


@pytest.mark.parametrize(
    ("policy", "sharing", "expected"),
    [
        ("Balanced", None, GpuSharing.AUTO),
        ("PowerSaving", None, GpuSharing.AUTO),
        ("Performance", None, GpuSharing.EXCLUSIVE),
        ("Performance", "Auto", GpuSharing.AUTO),
        ("Balanced", "Exclusive", GpuSharing.EXCLUSIVE),
    ],
)
def test_sharing_defaults_by_energy_policy(policy: str, sharing: str | None, expected: GpuSharing) -> None:
    gpu: dict[str, Any] = {"count": 1}
    if sharing:
        gpu["sharing"] = sharing
    assert effective_sharing(spec(gpu=gpu, energy={"policy": policy})) == expected


def test_explicit_auto_sharing_needs_one_gpu() -> None:
    with pytest.raises(ValidationError, match=r"sharing Auto needs gpu\.count 1"):
        spec(gpu={"count": 2, "sharing": "Auto"})
    with pytest.raises(ValidationError, match=r"sharing Auto needs gpu\.count 1"):
        spec(gpu={"count": 0, "sharing": "Auto"})
    # Exclusive, and the default, go with any count.
    assert spec(gpu={"count": 2, "sharing": "Exclusive"}).gpu.count == 2
    assert spec(gpu={"count": 0}).gpu.sharing is None


@pytest.mark.parametrize("memory", ["2Gi", "1500Mi", 1073741824, "1.5G", "0"])
def test_gpu_memory_takes_any_quantity(memory: int | str) -> None:
    assert spec(gpu={"count": 1, "memory": memory}).gpu.memory == memory


@pytest.mark.parametrize("memory", ["2 Gi", "-1Gi", "two", "2GB"])
def test_gpu_memory_rejects_non_quantities(memory: Any) -> None:
    with pytest.raises(ValidationError):
        spec(gpu={"count": 1, "memory": memory})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2Gi", 2 * 2**30),
        ("500M", 500 * 10**6),
        ("1.5e3", 1500),
        ("100m", Decimal("0.1")),
        (7, 7),
        ("+1Ki", 1024),
    ],
)
def test_parse_quantity(text: int | str, value: Decimal | int) -> None:
    assert parse_quantity(text) == value


def test_incompatible_names_what_a_shared_pod_cannot_honour() -> None:
    assert pools.incompatible(spec()) is None
    assert "gpu.memory" in str(pools.incompatible(spec(gpu={"count": 1})))
    assert "gpu.count" in str(pools.incompatible(spec(gpu={"count": 2, "memory": "1Gi"})))
    odd = spec(runtime={"args": ["--foo"], "grpc": True})
    assert pools.incompatible(odd) == (
        "runtime.args, runtime.grpc set: a shared model server takes no per-model pod settings"
    )
    assert "pod" in str(pools.incompatible(spec(pod={"labels": {"a": "b"}})))


def test_pool_key_separates_products_and_images() -> None:
    a = pools.pool_key("ml", spec(gpu={"count": 1, "memory": "1Gi", "product": "H100"}))
    b = pools.pool_key("ml", spec(gpu={"count": 1, "memory": "1Gi", "product": "A100"}))
    d = pools.pool_key(
        "ml", spec(gpu={"count": 1, "memory": "1Gi", "product": "H100"}, runtime={"image": "x:1"})
    )
    assert len({a.name, b.name, d.name}) == 3
    assert a.name == pools.pool_key("ml", spec(gpu={"count": 1, "memory": "9Gi", "product": "H100"})).name
    assert len(a.name) <= 63 and a.name.startswith("gs-pool-")


def test_model_config_lists_every_member_in_tf_serving_text_format() -> None:
    text = pools.model_config(members())

    def entry(name: str, path: str) -> str:
        body = f'    name: "{name}"\n    base_path: "{path}"\n    model_platform: "tensorflow"\n'
        return "  config {\n" + body + "  }\n"

    assert text == (
        "model_config_list {\n"
        + entry("a", "/mnt/pool/models/a")
        + entry("b", "/mnt/pool/models/b")
        + entry("c", "/mnt/pool/other/c")
        + entry("d", "gs://bucket/d")
        + "}\n"
    )
    assert pools.model_config([]) == "model_config_list {\n}\n"


def test_pool_deployment_one_gpu_per_pod_each_claim_once_polled_config() -> None:
    key = pools.PoolKey("ml", "H100", "img:1")
    dep = pools.pool_deployment(key, members(), 1, builders.BuildOptions(scheduler_name="packer"))
    pod = dep["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    assert dep["metadata"]["name"] == key.name and dep["spec"]["replicas"] == 1
    assert ctr["image"] == "img:1"
    assert ctr["resources"]["limits"][c.GPU_RESOURCE] == "1"
    assert f"--model_config_file={pools.MODEL_CONFIG_FILE}" in ctr["args"]
    assert "--model_config_file_poll_wait_seconds=2" in ctr["args"]
    assert not any(a.startswith(("--model_name", "--model_base_path")) for a in ctr["args"])
    claims = sorted(
        v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    )
    assert claims == ["models", "other"]
    assert {m["mountPath"] for m in ctr["volumeMounts"]} == {
        "/mnt/pool/models",
        "/mnt/pool/other",
        "/etc/greenserve",
    }
    assert pod["nodeSelector"] == {c.GPU_PRODUCT_LABEL: "H100"} and pod["schedulerName"] == "packer"
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    assert ctr["livenessProbe"]["timeoutSeconds"] == 5  # a restart reloads every model of the pod
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The pool's pods carry no ModelService's label: no ModelService counts them as its own replicas.
    assert c.LABEL_MODELSERVICE not in dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"] == {"matchLabels": {c.LABEL_POOL: key.name}}
    refs = dep["metadata"]["ownerReferences"]
    assert [r["name"] for r in refs] == ["small-a", "small-b", "small-c", "small-d"]
    assert not any(r["controller"] for r in refs)


def test_membership_changes_only_the_config_map_not_the_pod_template() -> None:
    key = pools.PoolKey("ml", None, "img:1")
    opts = builders.BuildOptions()
    three = members()[:3]
    two = [m for m in three if m.service != "small-b"]  # same claims as before
    tmpl = lambda ms: pools.pool_deployment(key, ms, 1, opts)["spec"]["template"]  # noqa: E731
    assert tmpl(three) == tmpl(two)
    cm3, cm2 = pools.pool_config_map(key, three), pools.pool_config_map(key, two)
    assert cm3["data"][pools.MODEL_CONFIG_KEY] != cm2["data"][pools.MODEL_CONFIG_KEY]
    assert "nodeSelector" not in tmpl(two)["spec"]


def test_service_selects_its_replicas_or_the_routing_label() -> None:
    s = spec()
    assert builders.service(OWNER, s)["spec"]["selector"] == {c.LABEL_MODELSERVICE: "small-a"}
    routed = builders.service(OWNER, s, routed=True)["spec"]["selector"]
    assert routed == {"model.greenserve.io/small-a": "available"}
    assert builders.route_label("small-a") == "model.greenserve.io/small-a"
