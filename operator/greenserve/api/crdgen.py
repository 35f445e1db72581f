"""Render the ModelService CRD from the pydantic types.

`python -m greenserve.api.crdgen` rewrites crds/modelservices.greenserve.io.yaml and the chart's copy;
`--check` exits 1 when a file differs from what the types produce (CI runs the check through a unit test).

Pydantic's JSON schema is not structural (it uses $ref, anyOf-with-null, titles), so it is rewritten
into the OpenAPI v3 subset the API server accepts: refs inlined, optionals unwrapped, defaults made
explicit (an object field defaults to its full default value).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from greenserve.api import constants, v1alpha1

CRD_FILE = f"{constants.CRD_NAME}.yaml"
HEADER = "# Generated from operator/greenserve/api/v1alpha1.py by `greenserve crd`; do not edit.\n"

# propertyNames (map keys: label keys, resource names) has no CRD equivalent; the operator checks keys.
_DROP_KEYS = {"title", "propertyNames"}


def _models() -> dict[str, type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for value in vars(v1alpha1).values():
        if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == v1alpha1.__name__:
            found[value.__name__] = value
    return found


def _factory_default(info: FieldInfo) -> Any:
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        # The full object, not {}: the API server checks defaults against CEL rules without first
        # applying the nested defaults, so {} fails a rule such as minReplicas <= maxReplicas.
        return value.model_dump(by_alias=True, exclude_none=True, mode="json")
    if isinstance(value, list):
        return [
            v.model_dump(by_alias=True, exclude_none=True, mode="json") if isinstance(v, BaseModel) else v
            for v in value
        ]
    return value


def _convert(node: Any, defs: dict[str, Any], models: dict[str, type[BaseModel]]) -> Any:
    if isinstance(node, list):
        return [_convert(n, defs, models) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = copy.deepcopy(defs[name])
        merged.update({k: v for k, v in node.items() if k != "$ref"})
        return _convert(merged, defs, models)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot make a structural schema from anyOf {node['anyOf']}")
        merged = {**branches[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        if merged.get("default", ...) is None:
            del merged["default"]
        return _convert(merged, defs, models)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _convert(prop, defs, models) for name, prop in value.items()}
        elif key == "additionalProperties":
            # A map (nodeSelector, resources.limits) keeps its value schema; True (a free-form object) is
            # marked preserve-unknown-fields below, as structural schemas forbid it beside properties.
            if isinstance(value, dict):
                out[key] = _convert(value, defs, models)
        elif key == "patternProperties":
            # Pydantic's form of a map whose keys have a pattern: the value schema stays, the key pattern
            # (no CRD equivalent) is checked by the operator.
            (value_schema,) = value.values()
            out["additionalProperties"] = _convert(value_schema, defs, models)
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            # JSON Schema's numeric form; OpenAPI v3.0 (the CRD's dialect) takes a bound and a flag.
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = _convert(value, defs, models)
    if "default" in out and out["default"] is None:
        del out["default"]  # an optional field's "no value", not a default
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "integer":
        out.setdefault("format", "int64")
    return out


def _add_factory_defaults(
    schema: dict[str, Any], model: type[BaseModel], models: dict[str, type[BaseModel]]
) -> None:
    props = schema.get("properties", {})
    for name, info in model.model_fields.items():
        alias = info.alias or name
        prop = props.get(alias)
        if prop is None:
            continue
        if info.default_factory is not None and "default" not in prop:
            prop["default"] = _factory_default(info)
        nested = _nested_model(info.annotation)
        if nested is not None:
            target = prop.get("items", prop)
            _add_factory_defaults(target, nested, models)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    models = _models()
    schema: dict[str, Any] = _convert(raw, defs, models)
    _add_factory_defaults(schema, model, models)
    return schema


# Only the operator writes status, but the CRD bounds it all the same (every string and list is bounded,
# tests/unit/api/test_crd.py): metav1.Condition's own limits, RFC 3339 times, one counter per replica.
_STATUS_BOUNDS: dict[tuple[str, ...], dict[str, int]] = {
    ("lastScaleTime",): {"maxLength": 64},
    ("energyCounters",): {"maxProperties": 2048},
    ("conditions",): {"maxItems": 32},
    ("conditions", "type"): {"maxLength": 316},
    ("conditions", "status"): {"maxLength": 7},
    ("conditions", "lastTransitionTime"): {"maxLength": 64},
}


def _status_schema() -> dict[str, Any]:
    schema = structural_schema(v1alpha1.ModelServiceStatus)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions.pop("default", None)
    for path, bounds in _STATUS_BOUNDS.items():
        node: dict[str, Any] | None = schema
        for name in path:
            parent = node.get("items", node) if node else {}  # the fields of a list are its items'
            node = parent.get("properties", {}).get(name)
        for key, value in bounds.items():
            if node is not None:
                node.setdefault(key, value)
    return schema


def build_crd() -> dict[str, Any]:
    spec_schema = structural_schema(v1alpha1.ModelServiceSpec)
    spec_schema["description"] = "Desired state of a served model."
    root = {
        "type": "object",
        "description": "A TensorFlow Serving model on GPU nodes, scaled and consolidated for energy.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "maxLength": 253},
            "kind": {"type": "string", "maxLength": 63},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": _status_schema(),
        },
        # The name is also the name of the Service, which must be a DNS-1035 label: without this rule a
        # ModelService named 1abc or a.b is accepted and fails only when its Service is applied.
        v1alpha1.CEL: [
            {
                "rule": "self.metadata.name.size() <= 63 && "
                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                "message": "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', "
                "starting with a letter, at most 63 characters): it names the ModelService's Service",
                # No fieldPath: the API server does not accept one into metadata; the message names it.
            }
        ],
    }

    def column(jsonpath: str, name: str, type_: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "type": type_, "jsonPath": jsonpath, **extra}

    ready_cond = '.status.conditions[?(@.type=="Ready")]'
    # The default view answers "is it serving, why not, how big, within which bounds, on what signal";
    # -o wide adds the GPU and energy figures.
    columns = [
        column(f"{ready_cond}.status", "Ready", "string"),
        column(f"{ready_cond}.reason", "Reason", "string"),
        column(".status.readyReplicas", "Replicas", "integer", description="Ready replicas"),
        column(".spec.scaling.minReplicas", "Min", "integer"),
        column(".spec.scaling.maxReplicas", "Max", "integer"),
        column(".spec.scaling.metric", "Metric", "string"),
        column(".spec.scaling.target", "Target", "number"),
        column(".metadata.creationTimestamp", "Age", "date"),
        column(".status.desiredReplicas", "Desired", "integer", priority=1),
        column(".status.gpus", "GPUs", "integer", priority=1),
        column(".status.powerWatts", "Power W", "number", priority=1),
        column(".status.joulesPerRequest", "J/req", "number", priority=1),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": constants.CRD_NAME,
            "labels": {"app.kubernetes.io/name": "greenserve", "app.kubernetes.io/part-of": "greenserve"},
        },
        "spec": {
            "group": constants.GROUP,
            "names": {
                "kind": constants.KIND,
                "listKind": f"{constants.KIND}List",
                "plural": constants.PLURAL,
                "singular": constants.SINGULAR,
                "shortNames": list(constants.SHORT_NAMES),
                "categories": ["greenserve", "all"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": constants.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def render() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


# The chart ships the same CRD (Helm installs crds/ before templates); both copies are generated.
DEFAULT_OUTPUTS = (Path("crds") / CRD_FILE, Path("charts") / "greenserve" / "crds" / CRD_FILE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, action="append", default=None, help="repeatable; default: crds/ and the chart's"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs")
    args = parser.parse_args(argv)
    text = render()
    outputs: list[Path] = args.out or list(DEFAULT_OUTPUTS)
    if args.check:
        stale = [p for p in outputs if not p.exists() or p.read_text() != text]
        for p in stale:
            print(f"{p} is out of date; run python -m greenserve.api.crdgen", file=sys.stderr)
        return 1 if stale else 0
    for out in outputs:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
