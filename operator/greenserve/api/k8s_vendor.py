"""Vendor Kubernetes' own schemas for the core types the ModelService embeds (affinity, volumes, env...).

`python -m greenserve.api.k8s_vendor --kubeconfig .harness/kubeconfig` reads the pinned kube-apiserver's
`/openapi/v3/api/v1` (through `kubectl get --raw`), or `--openapi FILE` reads a saved copy of it, and writes
`operator/greenserve/api/k8s_core_v1.json`, which `greenserve.api.crdgen` embeds into the CRD.

Each wanted definition is rewritten into a structural schema a CRD accepts:

- every `$ref` (also the `allOf: [{$ref}]` form) is inlined;
- `resource.Quantity` becomes `x-kubernetes-int-or-string` with Kubernetes' quantity pattern, and
  `intstr.IntOrString` becomes `x-kubernetes-int-or-string`; an embedded `ObjectMeta` keeps only labels
  and annotations (what a PVC template's metadata may carry);
- defaults are dropped (the API server defaults the Deployment's pod template itself, and a default here
  would add fields to the stored ModelService that its author never wrote), as are the strategic-merge
  and list-type extensions, which only matter to the built-in types;
- every string, list and map gets a bound where Kubernetes has none (Kubernetes bounds them only through
  the request size): see `_bound`. These bounds are generous on purpose: no real pod spec comes near them.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("k8s_core_v1.json")
CORE = "io.k8s.api.core.v1."
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

# The core/v1 definitions the ModelService embeds (see spec.pod and spec.runtime in v1alpha1.py).
WANTED = (
    "Affinity",
    "EnvVar",
    "LocalObjectReference",
    "PodSecurityContext",
    "SecurityContext",
    "Toleration",
    "TopologySpreadConstraint",
    "Volume",
    "VolumeMount",
)

# Kubernetes' quantity grammar (resource.Quantity), as controller-gen writes it for CRDs.
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY_PATTERN = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"
# A quantity longer than this is no real amount of anything; without a bound, a 200,000-digit quantity costs
# the API server seconds of CPU on every apply of the object that carries it.
QUANTITY_MAX_LENGTH = 64

# Bounds added where Kubernetes has none.
NAME_MAX = 253  # DNS subdomain: object names, volume and container names, paths of secrets/config maps
KEY_MAX = 316  # qualified names: label keys, taint keys, topology keys (253 prefix + "/" + 63)
STRING_MAX = 4096  # anything else: paths, commands, values
LIST_MAX = 64
MAP_MAX = 64

# Where Kubernetes checks a closed set or a range of values in Go code only (pod validation), the CRD says
# so in the schema, so that the ModelService is refused instead of its Deployment.
_ID = {"minimum": 0, "maximum": 2147483647}  # uids and gids
_OVERLAYS: dict[str, dict[str, dict[str, Any]]] = {
    "Toleration": {
        "operator": {"enum": ["", "Equal", "Exists"]},
        "effect": {"enum": ["", "NoSchedule", "PreferNoSchedule", "NoExecute"]},
    },
    "PodSecurityContext": {"runAsUser": _ID, "runAsGroup": _ID, "fsGroup": _ID},
    "SecurityContext": {"runAsUser": _ID, "runAsGroup": _ID},
    "TopologySpreadConstraint": {"maxSkew": {"minimum": 1}},
}

_KEEP = {
    "type",
    "format",
    "description",
    "properties",
    "items",
    "required",
    "enum",
    "additionalProperties",
    "pattern",
    "maxLength",
    "minLength",
    "maxItems",
    "minItems",
    "maxProperties",
    "minimum",
    "maximum",
    "x-kubernetes-int-or-string",
}


def _quantity(description: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "x-kubernetes-int-or-string": True,
        "pattern": QUANTITY_PATTERN,
        "maxLength": QUANTITY_MAX_LENGTH,
    }
    if description:
        out["description"] = description
    return out


def _ref_name(node: dict[str, Any]) -> str | None:
    if "$ref" in node:
        return str(node["$ref"]).rsplit("/", 1)[-1]
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and "$ref" in all_of[0]:
        return str(all_of[0]["$ref"]).rsplit("/", 1)[-1]
    return None


def _bound(schema: dict[str, Any], field: str) -> None:
    """Add the bound Kubernetes leaves to the request size; `field` is the property (or map/list) name."""
    kind = schema.get("type")
    if kind == "string" and "enum" not in schema and "maxLength" not in schema:
        lowered = field.lower()
        if lowered.endswith("name") or lowered in {"namespaces", "claimname"}:
            schema["maxLength"] = NAME_MAX
        elif lowered.endswith("key") or lowered in {"matchlabelkeys", "mismatchlabelkeys", "topologykey"}:
            schema["maxLength"] = KEY_MAX
        else:
            schema["maxLength"] = STRING_MAX
    elif kind == "array" and "maxItems" not in schema:
        schema["maxItems"] = LIST_MAX
    elif kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        schema.setdefault("maxProperties", MAP_MAX)


def _inline(node: Any, schemas: dict[str, Any], field: str, stack: tuple[str, ...]) -> Any:
    if not isinstance(node, dict):
        return node
    name = _ref_name(node)
    if name is not None:
        description = node.get("description")
        if name == QUANTITY:
            return _quantity(description)
        if name == INT_OR_STRING:
            out: dict[str, Any] = {"x-kubernetes-int-or-string": True}
            if description:
                out["description"] = description
            return out
        if name in stack:
            raise ValueError(f"recursive schema {' -> '.join((*stack, name))}")
        target = copy.deepcopy(schemas[name])
        if name == OBJECT_META:
            target = {
                "type": "object",
                "properties": {
                    "labels": target["properties"]["labels"],
                    "annotations": target["properties"]["annotations"],
                },
            }
        if description:
            target["description"] = description
        for prop, overlay in _OVERLAYS.get(name.removeprefix(CORE), {}).items():
            target["properties"][prop].update(overlay)
        return _inline(target, schemas, field, (*stack, name))
    out = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            out[key] = {prop: _inline(sub, schemas, prop, stack) for prop, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _inline(value, schemas, field, stack)
        else:
            out[key] = value
    if "properties" in out or "items" in out:
        out.setdefault("type", "object" if "properties" in out else "array")
    _bound(out, field)
    return out


def extract(openapi: dict[str, Any], wanted: tuple[str, ...] = WANTED) -> dict[str, Any]:
    """The wanted core/v1 definitions of an `/openapi/v3/api/v1` document, inlined and bounded."""
    schemas: dict[str, Any] = openapi["components"]["schemas"]
    return {name: _inline({"$ref": CORE + name}, schemas, name, ()) for name in wanted}


def fetch(kubeconfig: Path, kubectl: str) -> dict[str, Any]:
    out = subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "get", "--raw", "/openapi/v3/api/v1"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    loaded: dict[str, Any] = json.loads(out.stdout)
    return loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--kubeconfig", type=Path, help="read /openapi/v3/api/v1 from this API server")
    source.add_argument("--openapi", type=Path, help="a saved /openapi/v3/api/v1 document")
    parser.add_argument("--kubectl", default="kubectl")
    parser.add_argument("--version", required=True, help="the API server's version, recorded in the file")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    doc = fetch(args.kubeconfig, args.kubectl) if args.kubeconfig else json.loads(args.openapi.read_text())
    vendored = {
        "source": f"kube-apiserver {args.version} /openapi/v3/api/v1 (python -m greenserve.api.k8s_vendor)",
        "schemas": extract(doc),
    }
    args.out.write_text(json.dumps(vendored, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
