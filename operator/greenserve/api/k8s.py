"""Kubernetes core types embedded in the ModelService spec, with Kubernetes' own schemas.

The schemas come from `k8s_core_v1.json`, vendored from the pinned kube-apiserver by
`python -m greenserve.api.k8s_vendor` (refs inlined, bounds added). In the CRD they validate exactly as
Kubernetes validates the same fields of a pod; in Python the values stay plain dicts, passed through into
the Deployment's pod template.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from pydantic import WithJsonSchema

VENDORED = Path(__file__).with_name("k8s_core_v1.json")


@functools.cache
def _vendored() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(VENDORED.read_text())["schemas"]
    return loaded


def schema(name: str) -> dict[str, Any]:
    """The structural schema of core/v1 `name` (a copy; callers may change it)."""
    return copy.deepcopy(_vendored()[name])


def json_schema(name: str, description: str | None = None) -> WithJsonSchema:
    """The CRD schema of a field holding one core/v1 `name` object (a dict in Python)."""
    js = schema(name)
    if description:
        js["description"] = description
    return WithJsonSchema(js)


def list_schema(name: str, max_items: int, description: str | None = None) -> WithJsonSchema:
    """The CRD schema of a field holding at most `max_items` core/v1 `name` objects."""
    js: dict[str, Any] = {"type": "array", "items": schema(name), "maxItems": max_items}
    if description:
        js["description"] = description
    return WithJsonSchema(js)
