"""The Helm chart without a cluster: lint, schema strictness, and what the templates render."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from greenserve import contract
from greenserve.api.v1alpha1 import parse_spec
from greenserve.config import OperatorConfig
from greenserve.manifests import builders, pools
from support.chart import CHART, helm, kube_version, render
from support.paths import REPO

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
DASHBOARD = CHART / "dashboards" / "greenserve-modelservices.json"


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def activator_part(obj: dict[str, Any]) -> bool:
    return (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "activator" or obj[
        "metadata"
    ]["name"].endswith("-activator-writes")


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of `kind` (named `name`); without a name, the operator's (not the activator's)."""
    found = [
        o
        for o in by_kind(objs, kind)
        if (o["metadata"]["name"] == name if name is not None else not activator_part(o))
    ]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    )
    return found[0]


def operator_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    dep = one(objs, "Deployment", "greenserve")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env_of(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# --- CRDs


def test_chart_crd_is_a_byte_identical_copy_of_the_generated_crd() -> None:
    generated = REPO / "crds" / "modelservices.greenserve.io.yaml"
    copy = CHART / "crds" / generated.name
    assert copy.read_bytes() == generated.read_bytes(), (
        f"{copy} differs from {generated}: run `cp {generated} {copy}` after `greenserve crd`"
    )


def test_chart_ships_kopf_peering_crds() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text()))
    names = {(d["spec"]["group"], d["spec"]["names"]["kind"], d["spec"]["scope"]) for d in docs}
    assert names == {("kopf.dev", "ClusterKopfPeering", "Cluster"), ("kopf.dev", "KopfPeering", "Namespaced")}


# --- lint and schema


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "defaults")
def test_helm_lint_strict(helm_bin: Path, values: Path | None) -> None:
    args = ["lint", str(CHART), "--strict", "--kube-version", kube_version()]
    if values:
        args += ["--values", str(values)]
    out = helm(helm_bin, *args, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_ci_values_cover_every_optional_feature() -> None:
    merged = "\n".join(p.read_text() for p in CI_VALUES)
    for feature in (
        "binpack",
        "watchNamespaces",
        "serviceMonitor",
        "podMonitor",
        "podDisruptionBudget",
        "priorityClassName",
        "basicAuth",
    ):
        assert feature in merged, f"no ci/*-values.yaml exercises {feature}"


# Conditional subschemas (cross-field rules such as "one credential at most") constrain properties that
# the enclosing object already declares; they are not objects of their own.
_CONSTRAINTS = {"if", "then", "else", "not"}


def _walk_objects(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((path or "/", node))
        for key, child in node.items():
            if key in _CONSTRAINTS:
                continue
            found += _walk_objects(child, f"{path}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found += _walk_objects(child, f"{path}/{i}")
    return found


def test_schema_closes_every_object_with_properties() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    objects = _walk_objects(schema)
    assert len(objects) > 20
    open_ = [path for path, node in objects if node.get("additionalProperties") is not False]
    assert open_ == [], f"objects accepting unknown keys: {open_}"


def test_every_default_value_is_described_by_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def check(vals: dict[str, Any], node: dict[str, Any], path: str) -> None:
        props = node.get("properties")
        if props is None:
            return  # a map (stringMap, resources): free keys by design
        for key, val in vals.items():
            assert key in props, f"{path}.{key} is in values.yaml but not in values.schema.json"
            child = props[key]
            if "$ref" in child:
                child = schema["definitions"][child["$ref"].rsplit("/", 1)[1]]
            if isinstance(val, dict):
                check(val, child, f"{path}.{key}")

    check(values, schema, "")


def _P(assignment: str) -> list[str]:
    return ["--set", f"operator.config.prometheus.{assignment}"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "foo=bar"], "additional properties 'foo' not allowed"),
        (["--set", "operator.foo=1"], "additional properties 'foo' not allowed"),
        (
            ["--set", "operator.peering.leaderElection=true"],
            "additional properties 'leaderElection' not allowed",
        ),
        (["--set", "scheduler.binpack.weights.tpu=1"], "additional properties 'tpu' not allowed"),
        (["--set", "operator.replicaCount=two"], "got string, want integer"),
        (["--set", "operator.replicaCount=2"], "maximum"),
        (["--set", "operator.enabled=yes"], "want boolean"),
        (["--set-json", 'operator.watchNamespaces="default"'], "want array"),
        (["--set", "operator.watchNamespaces[0]=Not_A_Namespace"], "does not match pattern"),
        (["--set", "operator.strategy=BlueGreen"], "operator/strategy"),
        (["--set", "image.pullPolicy=Sometimes"], "image/pullPolicy"),
        (["--set", "operator.resources.requests.cpu=lots"], "operator/resources/requests/cpu"),
        (["--set", "operator.config.prometheusUrl=prometheus:9090"], "does not match pattern"),
        (["--set", "operator.config.reconcileInterval=0"], "reconcileInterval"),
        (["--set", "operator.config.statusRefresh=0"], "statusRefresh"),
        (["--set", "scheduler.binpack.weights.gpu=0"], "minimum"),
        (["--set", "metrics.port=70000"], "maximum"),
        (["--set-json", 'operator.tolerations=[{"key":"a","effect":"Sometimes"}]'], "tolerations/0/effect"),
        # Prometheus auth: one credential, complete basic auth, one CA source, no contradictions.
        (
            [*_P("bearerTokenSecret.name=tok"), *_P("bearerTokenFile=/var/run/token")],
            "prometheus/bearerTokenSecret/name",
        ),
        (
            [
                *_P("bearerTokenSecret.name=tok"),
                *_P("basicAuth.username=u"),
                *_P("basicAuth.passwordSecret.name=p"),
            ],
            "prometheus/basicAuth/username",
        ),
        (_P("basicAuth.username=u"), "prometheus/basicAuth/passwordSecret/name"),
        (_P("basicAuth.passwordSecret.name=p"), "prometheus/basicAuth/username"),
        ([*_P("tls.caConfigMap.name=a"), *_P("tls.caSecret.name=b")], "prometheus/tls/caSecret/name"),
        (
            [*_P("tls.caSecret.name=a"), *_P("tls.insecureSkipVerify=true")],
            "prometheus/tls/insecureSkipVerify",
        ),
        (_P("bearerTokenFile=token"), "prometheus/bearerTokenFile"),
        (_P("bearerTokenSecret.name=Not_A_Name"), "prometheus/bearerTokenSecret/name"),
        (["--set-json", 'operator.config.prometheus.headers={"X-Scope-OrgID":1}'], "headers/X-Scope-OrgID"),
        (_P("headers.Authorization=x"), "Authorization"),
    ],
)
def test_values_outside_the_schema_are_rejected(helm_bin: Path, args: list[str], message: str) -> None:
    out = helm(helm_bin, "template", "x", str(CHART), "--kube-version", kube_version(), *args, check=False)
    assert out.returncode != 0, f"{args} was accepted"
    assert "values don't meet the specifications of the schema" in out.stderr
    assert message in out.stderr, out.stderr


@pytest.mark.parametrize("version", ["v1.27.0", "v1.29.15", "v1.29.15-eks-1a2b3c"])
def test_kube_version_below_the_minimum_is_refused(helm_bin: Path, version: str) -> None:
    # The serving pods' preStop drain is a `sleep` action, which needs Kubernetes 1.30.
    out = helm(helm_bin, "template", "x", str(CHART), "--kube-version", version, check=False)
    assert out.returncode != 0 and "kubeVersion" in out.stderr


@pytest.mark.parametrize("version", ["v1.30.0", "v1.30.4-eks-1a2b3c", "v1.30.2-gke.1587003"])
def test_kube_version_from_1_30_is_accepted(helm_bin: Path, version: str) -> None:
    out = helm(helm_bin, "template", "x", str(CHART), "--kube-version", version, check=False)
    assert out.returncode == 0, out.stderr


# --- the operator Deployment


def test_operator_deployment_is_hardened_and_probed(helm_bin: Path) -> None:
    objs = render(helm_bin)
    dep = one(objs, "Deployment", "greenserve")
    pod = dep["spec"]["template"]["spec"]
    c = operator_container(objs)
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert "priorityClassName" not in pod


def test_operator_runs_with_kopf_peering_by_default(helm_bin: Path) -> None:
    objs = render(helm_bin)
    c = operator_container(objs)
    assert "--peering=greenserve" in c["args"] and "--standalone" not in c["args"]
    assert env_of(c)["POD_ID"] is None  # from the downward API: kopf's peer identity is the pod name
    assert one(objs, "ClusterKopfPeering")["metadata"]["name"] == "greenserve"
    rules = one(objs, "ClusterRole")["rules"]
    assert any("clusterkopfpeerings" in r["resources"] and "patch" in r["verbs"] for r in rules)


def test_standalone_drops_peering_objects_and_permissions(helm_bin: Path) -> None:
    objs = render(helm_bin, values={"operator.peering.enabled": False})
    c = operator_container(objs)
    assert "--standalone" in c["args"] and not any(a.startswith("--peering") for a in c["args"])
    assert not by_kind(objs, "ClusterKopfPeering") and not by_kind(objs, "KopfPeering")
    assert not any("kopf.dev" in r["apiGroups"] for r in one(objs, "ClusterRole")["rules"])


def test_operator_environment_comes_from_values(helm_bin: Path) -> None:
    objs = render(
        helm_bin,
        values={
            "operator.config": {
                "prometheusUrl": "http://prom:9090",
                "carbonIntensity": 55.5,
                "reconcileInterval": 7,
                "consolidationInterval": 45,
                "statusRefresh": 20,
                "fullResync": 600,
                "metricsStaleAfter": 90,
                "metricsWindow": 40,
                "maxGpusPerModelService": 16,
                "clusterDomain": "corp.internal",
            },
            "metrics.port": 9191,
        },
    )
    env = env_of(operator_container(objs))
    assert env["GREENSERVE_PROMETHEUS_URL"] == "http://prom:9090"
    assert env["GREENSERVE_CARBON_INTENSITY"] == "55.5"
    assert env["GREENSERVE_RECONCILE_INTERVAL"] == "7"
    assert env["GREENSERVE_CONSOLIDATION_INTERVAL"] == "45"
    assert (env["GREENSERVE_STATUS_REFRESH"], env["GREENSERVE_FULL_RESYNC"]) == ("20", "600")
    assert env["GREENSERVE_METRICS_STALE_AFTER"] == "90"
    assert env["GREENSERVE_METRICS_WINDOW"] == "40"
    assert env["GREENSERVE_MAX_GPUS_PER_MODELSERVICE"] == "16"
    assert env["GREENSERVE_CLUSTER_DOMAIN"] == "corp.internal"
    assert "GREENSERVE_SCRAPE_PODS" not in env  # Prometheus is the source
    assert env["GREENSERVE_METRICS_PORT"] == "9191"
    assert "GREENSERVE_SCHEDULER_NAME" not in env and "GREENSERVE_NAMESPACES" not in env
    svc = one(objs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["selector"] == one(objs, "Deployment")["spec"]["selector"]["matchLabels"]


def _mounts_and_volumes(objs: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in operator_container(objs)["volumeMounts"]}
    return mounts, {v["name"]: v for v in pod["volumes"]}


def test_prometheus_bearer_token_secret_ca_secret_and_headers(helm_bin: Path) -> None:
    objs = render(
        helm_bin,
        values={
            "operator.config.prometheusUrl": "https://thanos:10902",
            "operator.config.prometheus": {
                "bearerTokenSecret": {"name": "prom-token", "key": "tok"},
                "tls": {"caSecret": {"name": "prom-tls", "key": "bundle.pem"}},
                "headers": {"X-Scope-OrgID": "team-a", "X-Extra": "1"},
            },
        },
    )
    env = env_of(operator_container(objs))
    mounts, volumes = _mounts_and_volumes(objs)
    token_file, ca_file = env["GREENSERVE_PROMETHEUS_BEARER_TOKEN_FILE"], env["GREENSERVE_PROMETHEUS_CA_FILE"]
    # The files the operator reads are the Secret keys, mounted whole (a subPath would never rotate).
    assert (
        token_file == f"{mounts['prometheus-token']}/token" and ca_file == f"{mounts['prometheus-ca']}/ca.crt"
    )
    assert volumes["prometheus-token"]["secret"] == {
        "secretName": "prom-token",
        "items": [{"key": "tok", "path": "token"}],
    }
    assert volumes["prometheus-ca"]["secret"] == {
        "secretName": "prom-tls",
        "items": [{"key": "bundle.pem", "path": "ca.crt"}],
    }
    assert all("subPath" not in m for m in operator_container(objs)["volumeMounts"])
    assert json.loads(env["GREENSERVE_PROMETHEUS_HEADERS"]) == {"X-Scope-OrgID": "team-a", "X-Extra": "1"}
    assert (
        "GREENSERVE_PROMETHEUS_USERNAME" not in env
        and "GREENSERVE_PROMETHEUS_INSECURE_SKIP_VERIFY" not in env
    )


def test_prometheus_basic_auth_and_ca_config_map(helm_bin: Path) -> None:
    objs = render(helm_bin, values_files=[CHART / "ci" / "prometheus-auth-values.yaml"])
    env = env_of(operator_container(objs))
    mounts, volumes = _mounts_and_volumes(objs)
    assert env["GREENSERVE_PROMETHEUS_USERNAME"] == "greenserve"
    assert env["GREENSERVE_PROMETHEUS_PASSWORD_FILE"] == f"{mounts['prometheus-password']}/password"
    assert volumes["prometheus-password"]["secret"] == {
        "secretName": "mimir-basic-auth",
        "items": [{"key": "password", "path": "password"}],
    }
    assert volumes["prometheus-ca"]["configMap"] == {
        "name": "monitoring-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert env["GREENSERVE_PROMETHEUS_CA_FILE"] == f"{mounts['prometheus-ca']}/ca.crt"
    assert "GREENSERVE_PROMETHEUS_BEARER_TOKEN_FILE" not in env and "prometheus-token" not in volumes


def test_prometheus_token_file_in_the_pod_and_insecure_skip_verify(helm_bin: Path) -> None:
    token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    objs = render(
        helm_bin,
        values={
            "operator.config.prometheus.bearerTokenFile": token,
            "operator.config.prometheus.tls.insecureSkipVerify": True,
        },
    )
    env = env_of(operator_container(objs))
    mounts, volumes = _mounts_and_volumes(objs)
    assert env["GREENSERVE_PROMETHEUS_BEARER_TOKEN_FILE"] == token
    assert env["GREENSERVE_PROMETHEUS_INSECURE_SKIP_VERIFY"] == "true"
    assert set(volumes) == {"tmp"} and set(mounts) == {"tmp"}


def test_no_prometheus_auth_by_default(helm_bin: Path) -> None:
    objs = render(helm_bin)
    env = env_of(operator_container(objs))
    assert not [name for name in env if name.startswith("GREENSERVE_PROMETHEUS_")]
    assert set(_mounts_and_volumes(objs)[1]) == {"tmp"}


def test_without_prometheus_the_operator_scrapes_pods(helm_bin: Path) -> None:
    # An empty prometheusUrl must still leave the operator a metrics source, or autoscaling only holds.
    env = env_of(operator_container(render(helm_bin)))
    assert "GREENSERVE_PROMETHEUS_URL" not in env
    assert env["GREENSERVE_SCRAPE_PODS"] == "true"


def test_operator_disabled_keeps_service_account_and_rbac(helm_bin: Path) -> None:
    objs = render(helm_bin, values={"operator.enabled": False})
    kinds = {o["kind"] for o in objs if not activator_part(o)}
    assert "Deployment" not in kinds and "Service" not in kinds
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} <= kinds


def test_optional_objects(helm_bin: Path) -> None:
    objs = render(
        helm_bin,
        values={
            "operator.priorityClassName": "system-cluster-critical",
            "operator.podDisruptionBudget.enabled": True,
            "metrics.serviceMonitor.enabled": True,
            "metrics.serviceMonitor.labels": {"release": "kps"},
        },
    )
    assert (
        one(objs, "Deployment")["spec"]["template"]["spec"]["priorityClassName"] == "system-cluster-critical"
    )
    pdb = one(objs, "PodDisruptionBudget")
    assert (
        pdb["spec"]["selector"]["matchLabels"] == one(objs, "Deployment")["spec"]["selector"]["matchLabels"]
    )
    sm = one(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    # The operator's series carry their own `namespace` label; without honorLabels Prometheus renames it.
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    assert sm["spec"]["selector"]["matchLabels"].items() <= one(objs, "Service")["metadata"]["labels"].items()
    defaults = render(helm_bin)
    assert not by_kind(defaults, "PodDisruptionBudget") and not by_kind(defaults, "ServiceMonitor")
    assert not by_kind(defaults, "PodMonitor")


@pytest.mark.parametrize("watch", [[], ["models", "team-b"]])
def test_pod_monitor_scrapes_the_agents_named_port_with_the_operators_labels(
    helm_bin: Path, watch: list[str]
) -> None:
    values: dict[str, Any] = {
        "metrics.podMonitor.enabled": True,
        "metrics.podMonitor.labels": {"release": "kube-prometheus-stack"},
    }
    if watch:
        values["operator.watchNamespaces"] = watch
    pm = one(render(helm_bin, values=values), "PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["namespaceSelector"] == ({"matchNames": watch} if watch else {"any": True})
    # It selects what the operator's Deployment builder puts on serving pods.
    owner = builders.Owner(name="resnet", namespace="models", uid="1")
    spec = parse_spec({"model": {"name": "resnet", "storageUri": "pvc://models/resnet"}})
    template = builders.deployment(owner, spec, 1, builders.BuildOptions())["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    selector = pm["spec"]["selector"]
    assert selector["matchLabels"].items() <= pod_labels.items()
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "Exists" and expr["key"] in pod_labels
    # ... and what the pool builder puts on the shared pools' pods.
    key = pools.PoolKey("models", None, "img")
    pool_template = pools.pool_deployment(key, [], 1, builders.BuildOptions())["spec"]["template"]
    assert selector["matchLabels"].items() <= pool_template["metadata"]["labels"].items()
    assert not selector.get("matchExpressions")
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    assert ports[endpoint["port"]] == contract.AGENT_METRICS_PORT
    assert endpoint["path"] == contract.AGENT_METRICS_PATH
    assert endpoint["honorLabels"] is True
    # namespace and pod come from prometheus-operator; node and modelservice from these relabelings,
    # the same meta labels as the plain-Prometheus job.
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    job = {
        r["target_label"]: r["source_labels"]
        for r in contract.kubernetes_pod_scrape_config()["relabel_configs"]
        if "target_label" in r
    }
    assert targets == {
        contract.LABEL_MODELSERVICE: job[contract.LABEL_MODELSERVICE],
        contract.LABEL_NODE: job[contract.LABEL_NODE],
        contract.LABEL_POOL: job[contract.LABEL_POOL],
    }


def test_plain_prometheus_scrape_job_in_the_chart_docs_is_the_contracts() -> None:
    path = CHART / "docs" / "prometheus-scrape-config.yaml"
    shipped = yaml.safe_load(path.read_text())
    (job,) = shipped["scrape_configs"]
    assert job == contract.kubernetes_pod_scrape_config(interval=job["scrape_interval"]), (
        f"{path} differs from greenserve.contract.kubernetes_pod_scrape_config(): regenerate it"
    )
    assert job["scrape_interval"] == "15s"


# --- RBAC


def _rules(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for o in objs if o["kind"] in ("ClusterRole", "Role") for r in o["rules"]]


def test_rbac_has_no_wildcards_and_no_secrets(helm_bin: Path) -> None:
    for values in ({}, {"operator.watchNamespaces": ["a", "b"]}, {"scheduler.binpack.enabled": True}):
        for rule in _rules(render(helm_bin, values=values)):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert "secrets" not in rule["resources"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_cluster_wide_operator_gets_one_cluster_role(helm_bin: Path) -> None:
    objs = render(helm_bin)
    role = one(objs, "ClusterRole")
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert ("greenserve.io", "modelservices/status") in granted and ("", "nodes") in granted
    assert ("", "namespaces") not in granted  # kopf lists namespaces only when serving a list of them
    (lease_role,) = [r for r in by_kind(objs, "Role") if r["metadata"]["name"].endswith("-leader")]
    assert lease_role["metadata"]["namespace"] == "greenserve"
    assert lease_role["rules"][0]["resources"] == ["leases"]
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "greenserve", "namespace": "greenserve"}
    ]


def test_namespaced_operator_gets_roles_in_watched_namespaces(helm_bin: Path) -> None:
    objs = render(helm_bin, values={"operator.watchNamespaces": ["team-a", "team-b"]})
    cluster_rules = one(objs, "ClusterRole")["rules"]
    cluster_granted = {r for rule in cluster_rules for r in rule["resources"]}
    assert cluster_granted == {"nodes", "customresourcedefinitions", "namespaces", "pods"}
    # Consolidation reads every tenant's pods (their GPUs fill nodes too) but writes only in its Roles.
    (pods_rule,) = [r for r in cluster_rules if "pods" in r["resources"]]
    assert pods_rule["verbs"] == ["get", "list", "watch"] and pods_rule["resources"] == ["pods"]
    roles = {
        r["metadata"]["namespace"]: r
        for r in by_kind(objs, "Role")
        if not r["metadata"]["name"].endswith("-leader") and not activator_part(r)
    }
    assert set(roles) == {"team-a", "team-b"}
    for ns, role in roles.items():
        granted = {r for rule in role["rules"] for r in rule["resources"]}
        assert {
            "modelservices",
            "modelservices/status",
            "deployments",
            "pods",
            "kopfpeerings",
        } <= granted
        # Moves retire replicas through the ReplicaSet (pod-deletion-cost), never by eviction.
        assert "pods/eviction" not in granted
        bindings = [b for b in by_kind(objs, "RoleBinding") if not activator_part(b)]
        (binding,) = [b for b in bindings if b["metadata"]["namespace"] == ns]
        assert binding["subjects"][0]["namespace"] == "greenserve"
    assert {p["metadata"]["namespace"] for p in by_kind(objs, "KopfPeering")} == {"team-a", "team-b"}
    assert not by_kind(objs, "ClusterKopfPeering")
    c = operator_container(objs)
    assert {"--namespace=team-a", "--namespace=team-b"} <= set(c["args"])
    assert env_of(c)["GREENSERVE_NAMESPACES"] == "team-a,team-b"


def test_rbac_create_false_renders_no_rbac(helm_bin: Path) -> None:
    objs = render(helm_bin, values={"rbac.create": False, "scheduler.binpack.enabled": True})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & {o["kind"] for o in objs}


def test_existing_service_account(helm_bin: Path) -> None:
    objs = render(helm_bin, values={"serviceAccount.create": False, "serviceAccount.name": "ops"})
    assert [sa["metadata"]["name"] for sa in by_kind(objs, "ServiceAccount")] == ["greenserve-activator"]
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert one(objs, "ClusterRoleBinding")["subjects"][0]["name"] == "ops"


# --- bin-packing scheduler


def _scheduler_config(objs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = one(objs, "ConfigMap", "greenserve-scheduler")
    return dict(yaml.safe_load(cm["data"]["config.yaml"]))


def test_binpack_scheduler_profile_matches_the_harness_profile(helm_bin: Path) -> None:
    objs = render(helm_bin, values={"scheduler.binpack.enabled": True})
    config = _scheduler_config(objs)
    (profile,) = config["profiles"]
    assert profile["schedulerName"] == "greenserve-binpack"
    harness = yaml.safe_load((REPO / "tests/harness/scheduler-mostallocated.yaml").read_text())
    (reference,) = harness["profiles"]
    assert profile["plugins"] == reference["plugins"] and profile["pluginConfig"] == reference["pluginConfig"]
    args = profile["pluginConfig"][0]["args"]["scoringStrategy"]
    assert args["type"] == "MostAllocated"
    assert {r["name"]: r["weight"] for r in args["resources"]} == {
        "nvidia.com/gpu": 10,
        "cpu": 1,
        "memory": 1,
    }
    assert env_of(operator_container(objs))["GREENSERVE_SCHEDULER_NAME"] == "greenserve-binpack"


def test_binpack_scheduler_deployment_and_rbac(helm_bin: Path) -> None:
    objs = render(helm_bin, values={"scheduler.binpack.enabled": True})
    dep = one(objs, "Deployment", "greenserve-scheduler")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == f"registry.k8s.io/kube-scheduler:{kube_version()}"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["serviceAccountName"] == "greenserve-scheduler"
    refs = {
        (b["kind"], b["roleRef"]["name"])
        for b in objs
        if b["kind"] in ("ClusterRoleBinding", "RoleBinding")
        and b["subjects"][0]["name"] == "greenserve-scheduler"
    }
    assert {
        ("ClusterRoleBinding", "system:kube-scheduler"),
        ("ClusterRoleBinding", "system:volume-scheduler"),
        ("RoleBinding", "extension-apiserver-authentication-reader"),
        ("RoleBinding", "greenserve-scheduler-leader"),
    } == refs
    lease = _scheduler_config(objs)["leaderElection"]
    assert (lease["resourceName"], lease["resourceNamespace"]) == ("greenserve-scheduler", "greenserve")
    leader_role = one(objs, "Role", "greenserve-scheduler-leader")
    assert any(r.get("resourceNames") == ["greenserve-scheduler"] for r in leader_role["rules"])
    pinned = render(
        helm_bin, values={"scheduler.binpack.enabled": True, "scheduler.binpack.image.tag": "v1.33.1"}
    )
    (c2,) = one(pinned, "Deployment", "greenserve-scheduler")["spec"]["template"]["spec"]["containers"]
    assert c2["image"] == "registry.k8s.io/kube-scheduler:v1.33.1"


def test_binpack_scheduler_config_is_accepted_by_kube_scheduler(
    helm_bin: Path, kube_scheduler_bin: Path, tmp_path: Path
) -> None:
    """kube-scheduler decodes the profile strictly and validates it (--write-config-to exits after that)."""
    config = _scheduler_config(render(helm_bin, values={"scheduler.binpack.enabled": True}))
    src, dst = tmp_path / "config.yaml", tmp_path / "effective.yaml"
    src.write_text(yaml.safe_dump(config))
    # --master is never contacted: the scheduler validates the profiles, writes the config and exits.
    cmd = [
        str(kube_scheduler_bin),
        "--config",
        str(src),
        "--write-config-to",
        str(dst),
        "--master",
        "https://127.0.0.1:1",
        "--secure-port",
        "0",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    effective = yaml.safe_load(dst.read_text())
    (profile,) = effective["profiles"]
    fit = next(p for p in profile["pluginConfig"] if p["name"] == "NodeResourcesFit")
    assert fit["args"]["scoringStrategy"]["type"] == "MostAllocated"
    bad = dict(config)
    bad["profiles"] = [
        {
            **config["profiles"][0],
            "pluginConfig": [
                {
                    "name": "NodeResourcesFit",
                    "args": {
                        "scoringStrategy": {
                            "type": "MostAllocated",
                            "resources": [{"name": "nvidia.com/gpu", "weight": 1000}],
                        }
                    },
                }
            ],
        }
    ]
    src.write_text(yaml.safe_dump(bad))
    dst.unlink()
    rejected = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    # The positive check above can fail: kube-scheduler does validate the weights.
    assert rejected.returncode != 0 and not dst.exists()
    assert "not in valid range" in rejected.stderr


# --- Grafana dashboard


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def test_dashboard_configmap_carries_the_dashboard(helm_bin: Path) -> None:
    objs = render(helm_bin, values={"dashboard.namespace": "monitoring"})
    cm = one(objs, "ConfigMap", "greenserve-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert json.loads(cm["data"]["greenserve-modelservices.json"]) == json.loads(DASHBOARD.read_text())
    assert not by_kind(render(helm_bin, values={"dashboard.enabled": False}), "ConfigMap")


def test_dashboard_queries_only_metrics_of_the_contract() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = {m.name for m in (*contract.OPERATOR_METRICS, *contract.AGENT_METRICS)}
    used = {name for e in _exprs(dashboard) for name in re.findall(r"\b(greenserve_[a-z0-9_]+)\b", e)}
    assert used, "no greenserve metric in the dashboard"
    assert used <= known, f"not in greenserve.contract: {sorted(used - known)}"
    # The issue asks for power, energy, joules per request, replicas and active GPU nodes per ModelService.
    for spec in (
        contract.OP_POWER,
        contract.OP_ENERGY,
        contract.OP_JPR,
        contract.OP_REPLICAS_DESIRED,
        contract.OP_REPLICAS_READY,
        contract.GPU_POWER,
    ):
        assert spec.name in used, f"{spec.name} missing from the dashboard"
    # Per-ModelService panels group by the contract's target labels.
    per_msvc = [e for e in _exprs(dashboard) if "by (namespace, modelservice)" in e]
    assert len(per_msvc) >= 6
    assert contract.LABEL_MODELSERVICE == "modelservice" and contract.LABEL_NODE == "node"
    nodes = [e for e in _exprs(dashboard) if "by (namespace, modelservice, node)" in e]
    assert nodes, "no active-GPU-nodes-per-ModelService panel"


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and refs
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")")
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    used = {m for e in _exprs(dashboard) for m in re.findall(r"\$(\w+)", e)} - {"__range"}
    assert used <= variables


# --- everything rendered


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda v: v.name)
def test_every_object_is_labelled_and_namespaced_correctly(helm_bin: Path, values: Path) -> None:
    objs = render(helm_bin, namespace="gs-ns", values_files=[values])
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterKopfPeering",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for obj in objs:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "greenserve"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"].get("namespace"), (
                f"{obj['kind']}/{obj['metadata']['name']} has no namespace"
            )


# --- admission policy


def test_admission_policy_is_bound_to_the_operator_service_account(helm_bin: Path) -> None:
    objs = render(helm_bin)
    policy = one(objs, "ValidatingAdmissionPolicy")
    binding = one(objs, "ValidatingAdmissionPolicyBinding")
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    (who,) = [m for m in policy["spec"]["matchConditions"] if m["name"] == "is-the-operator"]
    assert who["expression"].endswith('"system:serviceaccount:greenserve:greenserve"')
    protected = [
        v["expression"] for v in policy["spec"]["validations"] if "request.namespace in" in v["expression"]
    ]
    assert protected and '["kube-system","kube-public","kube-node-lease"]' in protected[0]


def test_admission_policy_can_be_switched_off_or_to_warn(helm_bin: Path) -> None:
    for values in ({"rbac.admissionPolicy.enabled": False}, {"rbac.create": False}):
        kinds = {o["kind"] for o in render(helm_bin, values=values)}
        assert not {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} & kinds
    objs = render(helm_bin, values={"rbac.admissionPolicy.validationActions": ["Warn", "Audit"]})
    assert one(objs, "ValidatingAdmissionPolicyBinding")["spec"]["validationActions"] == ["Warn", "Audit"]


def test_operator_never_deletes_or_replaces_what_it_applies(helm_bin: Path) -> None:
    """Writes are PATCH (server-side apply, merge patches); owned objects go with their ModelService
    through the garbage collector, so no rule grants delete or update on them."""
    for values in ({}, {"operator.watchNamespaces": ["a"]}):
        for rule in _rules(render(helm_bin, values=values)):
            if {"deployments", "services", "configmaps", "poddisruptionbudgets", "pods"} & set(
                rule["resources"]
            ):
                assert not {"delete", "deletecollection", "update"} & set(rule["verbs"]), rule


@pytest.mark.parametrize("front", [True, False])
def test_agent_front_setting_reaches_the_serving_pods(
    helm_bin: Path, monkeypatch: pytest.MonkeyPatch, front: bool
) -> None:
    env = env_of(operator_container(render(helm_bin, values={"operator.config.agentFront": front})))
    monkeypatch.setenv("GREENSERVE_AGENT_FRONT", str(env["GREENSERVE_AGENT_FRONT"]))
    config = OperatorConfig.from_env()
    assert config.agent_front is front
    owner = builders.Owner(name="m", namespace="ns", uid="1")
    spec = parse_spec({"model": {"name": "m", "storageUri": "pvc://models/m"}})
    options = builders.BuildOptions(agent_front=config.agent_front)
    args = builders.deployment(owner, spec, 1, options)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert ("--agent-front=off" in args) is not front


# --- the scale-to-zero activator


def test_activator_runs_the_operator_image_with_least_privilege(helm_bin: Path) -> None:
    objs = render(helm_bin)
    dep = one(objs, "Deployment", "greenserve-activator")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == operator_container(objs)["image"]
    assert container["command"] == ["python", "-m", "greenserve", "activator"]
    assert "--max-wait-seconds=180" in container["args"]
    assert pod["serviceAccountName"] == "greenserve-activator"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    role = one(objs, "ClusterRole", "greenserve-activator")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}  # fmt: skip
    assert granted == {
        ("", "services", "list"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("greenserve.io", "modelservices", "patch"),
    }
    svc = one(objs, "Service", "greenserve-activator")
    assert {p["name"] for p in svc["spec"]["ports"]} == {"http", "metrics"}
    env = env_of(operator_container(objs))
    assert env["GREENSERVE_ACTIVATOR_SERVICE"] == "greenserve/greenserve-activator"
    policy = one(objs, "ValidatingAdmissionPolicy", "greenserve-activator-writes")
    assert (
        "system:serviceaccount:greenserve:greenserve-activator"
        in policy["spec"]["matchConditions"][0]["expression"]
    )


def test_activator_can_be_switched_off(helm_bin: Path) -> None:
    objs = render(helm_bin, values={"activator.enabled": False})
    assert not [o for o in objs if activator_part(o)]
    assert "GREENSERVE_ACTIVATOR_SERVICE" not in env_of(operator_container(objs))
