"""Acceptance for the ModelService API (issues 11 and 17): bad or unusual manifests against the API server.

Each invalid manifest must be rejected with a message that names the offending field; each valid but unusual
one must be accepted and read back unchanged (and parse in the operator). Only the API server and the CRD
are needed: no operator runs here.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml

from greenserve.api import constants as c
from greenserve.api import k8s, k8s_vendor
from greenserve.api.v1alpha1 import parse_spec
from greenserve.manifests import builders
from support.kube import Kubectl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BASE: dict[str, Any] = {"model": {"name": "resnet", "storageUri": "/models/resnet"}}


def manifest(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def with_(**parts: Any) -> dict[str, Any]:
    return {**BASE, **parts}


def resources(**requests: Any) -> dict[str, Any]:
    return with_(runtime={"resources": {"requests": requests}})


AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a", "b"]}
                    ]
                }
            ]
        }
    },
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 50,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {c.LABEL_MODELSERVICE: "x"}},
                },
            }
        ]
    },
}

# (manifest name, spec, the field the message must name, a phrase it must contain)
INVALID: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("dns1035-digit", "1abc", BASE, "metadata.name", "DNS-1035"),
    ("dns1035-dot", "a.b", BASE, "metadata.name", "DNS-1035"),
    (
        "quantity-200k-digits",
        "huge",
        resources(cpu="1" * 200_000),
        "spec.runtime.resources.requests",
        "Too long",
    ),
    ("quantity-garbage", "q1", resources(cpu="lots"), "spec.runtime.resources.requests", "should match"),
    ("quantity-negative", "q2", resources(memory="-1Gi"), "spec.runtime.resources.requests", "should match"),
    (
        "quantity-gpu-in-resources",
        "q3",
        with_(runtime={"resources": {"limits": {c.GPU_RESOURCE: 2}}}),
        "spec.runtime.resources",
        "spec.gpu.count",
    ),
    (
        "idle-period-needs-min-zero",
        "z0",
        with_(scaling={"minReplicas": 1, "scaleToZeroAfterSeconds": 60}),
        "spec.scaling.scaleToZeroAfterSeconds",
        "only with minReplicas 0",
    ),
    (
        "idle-period-too-short",
        "z1",
        with_(scaling={"minReplicas": 0, "scaleToZeroAfterSeconds": 1}),
        "spec.scaling.scaleToZeroAfterSeconds",
        "greater than or equal to 10",
    ),
    ("target-zero", "t0", with_(scaling={"target": 0}), "spec.scaling.target", "greater than 0"),
    ("target-negative", "t1", with_(scaling={"target": -0.5}), "spec.scaling.target", "greater than 0"),
    (
        "target-percent",
        "t2",
        with_(scaling={"metric": "gpuUtilization", "target": 250}),
        "spec.scaling.target",
        "percentage",
    ),
    (
        "gpu-metric-on-cpu",
        "g0",
        with_(gpu={"count": 0}, scaling={"metric": "gpuUtilization", "target": 60}),
        "spec.scaling.metric",
        "needs GPUs",
    ),
    (
        "min-over-max",
        "mm",
        with_(scaling={"minReplicas": 5, "maxReplicas": 2}),
        "spec.scaling.minReplicas",
        "less than or equal",
    ),
    (
        "model-name-slash",
        "mn",
        with_(model={"name": "a/b", "storageUri": "/m"}),
        "spec.model.name",
        "should match",
    ),
    (
        "storage-traversal",
        "st",
        with_(model={"name": "m", "storageUri": "pvc://models/../../etc/passwd"}),
        "spec.model.storageUri",
        "'..'",
    ),
    (
        "storage-shell",
        "ss",
        with_(model={"name": "m", "storageUri": "/models/m;rm -rf /"}),
        "spec.model.storageUri",
        "should match",
    ),
    (
        "storage-substitution",
        "su",
        with_(model={"name": "m", "storageUri": "gs://bucket/$(id)"}),
        "spec.model.storageUri",
        "should match",
    ),
    (
        "storage-unicode",
        "sn",
        with_(model={"name": "m", "storageUri": "/modèles/m"}),
        "spec.model.storageUri",
        "should match",
    ),
    (
        "storage-s3",
        "s3",
        with_(model={"name": "m", "storageUri": "s3://bucket/m"}),
        "spec.model.storageUri",
        "no S3 filesystem",
    ),
    (
        "credentials-on-pvc",
        "cp",
        with_(model={"name": "m", "storageUri": "pvc://c/m", "credentialsSecret": "k"}),
        "spec.model.credentialsSecret",
        "gs://",
    ),
    (
        "image-leading-space",
        "im",
        with_(runtime={"image": " tensorflow/serving:2.18.0-gpu"}),
        "spec.runtime.image",
        "should match",
    ),
    (
        "toleration-effect",
        "te",
        with_(gpu={"tolerations": [{"key": "k", "effect": "Sometimes"}]}),
        "spec.gpu.tolerations[0].effect",
        "Unsupported value",
    ),
    (
        "too-many-tolerations",
        "tt",
        with_(gpu={"tolerations": [{"key": f"k{i}", "operator": "Exists"} for i in range(17)]}),
        "spec.gpu.tolerations",
        "Too many",
    ),
    (
        "owned-flag",
        "of",
        with_(runtime={"args": ["--model_base_path=/elsewhere"]}),
        "spec.runtime.args",
        "the operator does",
    ),
    (
        "arg-too-long",
        "al",
        with_(runtime={"args": ["--x=" + "y" * 5000]}),
        "spec.runtime.args[0]",
        "Too long",
    ),
    (
        "mount-without-volume",
        "mv",
        with_(runtime={"volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}),
        "spec.runtime.volumeMounts",
        "pod.volumes",
    ),
    (
        "reserved-volume",
        "rv",
        with_(pod={"volumes": [{"name": "model-store", "emptyDir": {}}]}),
        "spec.pod.volumes",
        "operator's volume names",
    ),
    (
        "env-without-name",
        "en",
        with_(runtime={"env": [{"value": "1"}]}),
        "spec.runtime.env[0].name",
        "Required",
    ),
    (
        "affinity-without-terms",
        "af",
        with_(pod={"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}}),
        "spec.pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms",
        "Required",
    ),
    (
        "service-account-name",
        "sa",
        with_(pod={"serviceAccountName": "Not_A_Name"}),
        "spec.pod.serviceAccountName",
        "should match",
    ),
    (
        "label-value-too-long",
        "lv",
        with_(pod={"labels": {"team": "x" * 64}}),
        "spec.pod.labels.team",
        "Too long",
    ),
    (
        "negative-uid",
        "uid",
        with_(pod={"securityContext": {"runAsUser": -5}}),
        "spec.pod.securityContext.runAsUser",
        "greater than or equal to 0",
    ),
    (
        "unknown-metric",
        "um",
        with_(scaling={"metric": "latency"}),
        "spec.scaling.metric",
        "Unsupported value",
    ),
]

# (manifest name, spec): accepted, and every field read back exactly as written.
VALID: list[tuple[str, str, dict[str, Any]]] = [
    ("digest-image", "digest", with_(runtime={"image": "tensorflow/serving@sha256:" + "0123abcd" * 8})),
    ("mirrored-image", "mirror", with_(runtime={"image": "registry.internal:5000/ml/serving:2.18.0"})),
    ("integer-cpu", "cpu-int", resources(cpu=1, memory="2Gi")),
    ("scale-to-zero", "zero", with_(scaling={"minReplicas": 0, "scaleToZeroAfterSeconds": 120})),
    (
        "ephemeral-storage",
        "ephemeral",
        with_(
            runtime={
                "resources": {
                    "requests": {"cpu": "500m", "ephemeral-storage": "10Gi"},
                    "limits": {"ephemeral-storage": "20Gi", "hugepages-2Mi": "1Gi"},
                }
            }
        ),
    ),
    ("target-below-one", "slow", with_(scaling={"target": 0.5})),
    (
        "underscore-model",
        "hp2",
        with_(model={"name": "half_plus_two", "storageUri": "pvc://models/half_plus_two"}),
    ),
    (
        "toleration-seconds",
        "tol",
        with_(
            gpu={
                "count": 1,
                "tolerations": [
                    {
                        "key": "node.kubernetes.io/unreachable",
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 30,
                    }
                ],
            }
        ),
    ),
    ("affinity", "aff", with_(pod={"affinity": AFFINITY})),
    (
        "gcs-key-file",
        "gcs",
        with_(
            model={
                "name": "m",
                "storageUri": "gs://bucket/models/m",
                "credentialsSecret": "gcs-sa",
                "credentialsKey": "sa.json",
            }
        ),
    ),
    ("longest-name", "a" + "b" * 62, BASE),
    (
        "everything",
        "full",
        with_(
            runtime={
                "grpc": True,
                "args": ["--tensorflow_intra_op_parallelism=4"],
                "env": [
                    {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                "securityContext": {
                    "runAsNonRoot": True,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
            },
            pod={
                "labels": {"team": "ml"},
                "annotations": {"example.com/owner": "ml platform"},
                "serviceAccountName": "models",
                "automountServiceAccountToken": True,
                "imagePullSecrets": [{"name": "regcred"}],
                "nodeSelector": {"pool": "gpu"},
                "runtimeClassName": "nvidia",
                "priorityClassName": "serving",
                "securityContext": {"runAsUser": 1000, "fsGroup": 1000},
                "topologySpreadConstraints": [
                    {
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {"team": "ml"}},
                    }
                ],
                "volumes": [{"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
            },
        ),
    ),
]


def test_at_least_25_manifests() -> None:
    assert len(INVALID) + len(VALID) >= 25 and len({case[0] for case in INVALID + VALID}) == len(
        INVALID + VALID
    )


@pytest.mark.parametrize(
    ("name", "spec", "field", "phrase"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_manifest_is_rejected_naming_the_field(
    kubectl: Kubectl, namespace: str, name: str, spec: dict[str, Any], field: str, phrase: str
) -> None:
    # create, not apply: a client-side apply would first copy a huge object into an annotation.
    started = time.monotonic()
    result = kubectl.run("create", "-f", "-", input=json.dumps(manifest(name, namespace, spec)), check=False)
    elapsed = time.monotonic() - started
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert field in result.stderr and phrase in result.stderr, result.stderr[:2000]
    assert kubectl.run("get", "msvc", name, "-n", namespace, check=False).returncode != 0
    assert elapsed < 30, f"the API server took {elapsed:.1f}s to reject it"


def test_quantities_that_do_not_fit_are_rejected(kubectl: Kubectl, namespace: str) -> None:
    """A quantity written as a YAML number that does not fit an int64: named and rejected; and the
    200,000-digit integer, sent raw (kubectl refuses to encode it), is refused by the API server's decoder."""
    body = json.dumps(manifest("int64", namespace, resources(cpu=0))).replace(
        '"cpu": 0', '"cpu": 99999999999999999999'
    )
    result = kubectl.run("create", "--validate=false", "-f", "-", input=body, check=False)
    assert result.returncode != 0 and "spec.runtime.resources.requests.cpu" in result.stderr, result.stderr
    body = json.dumps(manifest("bigint", namespace, resources(cpu=0))).replace(
        '"cpu": 0', '"cpu": ' + "1" * 200_000
    )
    path = f"/apis/{c.API_VERSION}/namespaces/{namespace}/{c.PLURAL}"
    started = time.monotonic()
    result = kubectl.run("create", "--raw", path, "-f", "-", input=body, check=False)
    assert result.returncode != 0 and "BadRequest" in result.stderr, result.stderr[:500]
    assert time.monotonic() - started < 30
    for name in ("int64", "bigint"):
        assert kubectl.run("get", "msvc", name, "-n", namespace, check=False).returncode != 0


def _same(sent: Any, stored: Any, path: str = "spec") -> list[str]:
    """Where `stored` differs from what was `sent` (fields the API server defaulted are not differences)."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [f"{path}: {stored!r}"]
        return [d for k, v in sent.items() for d in _same(v, stored.get(k), f"{path}.{k}")]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [f"{path}: {stored!r}"]
        return [
            d for i, (a, b) in enumerate(zip(sent, stored, strict=True)) for d in _same(a, b, f"{path}[{i}]")
        ]
    return (
        [] if type(sent) is type(stored) and sent == stored else [f"{path}: sent {sent!r}, stored {stored!r}"]
    )


@pytest.mark.parametrize(("name", "spec"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_unusual_manifest_is_accepted_and_round_trips(
    kubectl: Kubectl, namespace: str, name: str, spec: dict[str, Any]
) -> None:
    kubectl.run("create", "-f", "-", input=json.dumps(manifest(name, namespace, spec)))
    stored = json.loads(kubectl.run("get", "msvc", name, "-n", namespace, "-o", "json").stdout)["spec"]
    assert _same(spec, stored) == []
    parse_spec(stored)  # what the API server accepts, the operator parses
    # Server-side apply of the same manifest changes nothing (no field the server rewrites on each apply).
    applied = kubectl.run(
        "apply",
        "--server-side",
        "--field-manager=test",
        "-f",
        "-",
        input=yaml.safe_dump(manifest(name, namespace, spec)),
    )
    assert "unchanged" in applied.stdout or "serverside-applied" in applied.stdout
    again = json.loads(kubectl.run("get", "msvc", name, "-n", namespace, "-o", "json").stdout)["spec"]
    assert again == stored


def test_printer_columns(kubectl: Kubectl, namespace: str) -> None:
    kubectl.run(
        "create", "-f", "-", input=json.dumps(manifest("cols", namespace, with_(scaling={"target": 0.5})))
    )
    header, row = kubectl.run("get", "msvc", "cols", "-n", namespace).stdout.strip().splitlines()
    assert header.split() == ["NAME", "READY", "REASON", "REPLICAS", "MIN", "MAX", "METRIC", "TARGET", "AGE"]
    # No operator runs: status columns are blank, the spec's bounds and target are shown.
    assert row.split()[1:5] == ["1", "4", "requestsPerSecond", "0.5"]


def test_vendored_core_schemas_match_the_api_server(kubectl: Kubectl) -> None:
    """The embedded core/v1 schemas are what the pinned kube-apiserver publishes, rewritten the same way
    (refs inlined, bounds added): a version bump that changes them fails here until they are re-vendored
    (python -m greenserve.api.k8s_vendor --kubeconfig .harness/kubeconfig --version <version>)."""
    served = json.loads(kubectl.run("get", "--raw", "/openapi/v3/api/v1").stdout)
    assert k8s_vendor.extract(served) == json.loads(k8s.VENDORED.read_text())["schemas"]


@pytest.mark.parametrize(("name", "spec"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_the_operators_objects_for_unusual_specs_pass_the_api_server(
    kubectl: Kubectl, namespace: str, name: str, spec: dict[str, Any]
) -> None:
    """What the builder merges from spec.pod and spec.runtime is a valid Deployment and Service for the API
    server itself (server-side dry run), not only for the CRD's copy of the schemas."""
    owner = builders.Owner(name=name, namespace=namespace, uid="00000000-0000-0000-0000-000000000000")
    objs = builders.objects(owner, parse_spec(spec), 1, builders.BuildOptions())
    for obj in objs:
        obj["metadata"].pop("ownerReferences")  # the owner does not exist: only the object is checked
    result = kubectl.run(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(objs), check=False
    )
    assert result.returncode == 0, result.stderr
