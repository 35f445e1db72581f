"""The status patch comes from the typed model: every name the operator writes is one the CRD keeps."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from greenserve.api import crdgen
from greenserve.api import v1alpha1 as api
from greenserve.api.v1alpha1 import ModelServiceStatus, merge_status, status_patch
from support.paths import REPO


def _models() -> list[type[BaseModel]]:
    return [
        c
        for _, c in inspect.getmembers(api, inspect.isclass)
        if issubclass(c, BaseModel) and c.__module__ == api.__name__
    ]


def test_aliases_are_plain_camel_case_or_declared() -> None:
    """pydantic's to_camel turned grams_co2e into gramsCo2E (a capital after a digit); the CRD then
    declared a field the operator never wrote and the API server pruned what it did write."""
    assert api.camel("grams_co2e") == "gramsCo2e" and api.camel("latency_p95_ms") == "latencyP95Ms"
    explicit = {("ModelServiceStatus", "grams_co2e"): "gramsCO2e"}
    for model in _models():
        for name, info in model.model_fields.items():
            want = explicit.get((model.__name__, name), api.camel(name))
            assert info.alias == want, f"{model.__name__}.{name} is {info.alias}, expected {want}"


def test_every_status_field_is_in_the_crd_under_its_alias() -> None:
    crd = yaml.safe_load(crdgen.render())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    aliases = {info.alias for info in ModelServiceStatus.model_fields.values()}
    assert aliases == set(props)
    assert "gramsCO2e" in props


def test_every_status_field_is_documented_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The ModelService API") : readme.index("## How it scales")]
    internal = {"energyCounters", "scaler", "move", "observedGeneration", "conditions"}
    documented = set(re.findall(r"`([a-z][A-Za-z0-9]*)`", section))
    missing = {
        str(info.alias) for info in ModelServiceStatus.model_fields.values() if info.alias not in internal
    } - documented
    assert missing == set()


def test_patch_writes_set_fields_by_alias_and_nulls_what_was_cleared() -> None:
    old: dict[str, Any] = {"powerWatts": 300.0, "energyCounters": {"a": 1.0, "b": 2.0}, "replicas": 2}
    update = ModelServiceStatus(power_watts=None, energy_counters={"b": 3.0}, grams_co2e=1.5)
    patch = status_patch(update, old)
    assert patch == {"powerWatts": None, "energyCounters": {"a": None, "b": 3.0}, "gramsCO2e": 1.5}


def test_merge_keeps_what_each_part_set_later_wins() -> None:
    merged = merge_status(
        ModelServiceStatus(replicas=1, power_watts=None), ModelServiceStatus(replicas=2, gpus=4)
    )
    assert merged.model_fields_set == {"replicas", "power_watts", "gpus"}
    assert (merged.replicas, merged.power_watts, merged.gpus) == (2, None, 4)


def test_unknown_status_names_cannot_be_written() -> None:
    with pytest.raises(ValidationError, match="grams_co2_e"):
        ModelServiceStatus(**{"grams_co2_e": 1.0})
