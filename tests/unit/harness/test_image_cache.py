"""The image cache stays bounded (tests/harness/images.py): each code change adds an app layer and each lock
change a deps layer, so old layers are deleted after a build, and a cache hit counts as a use."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("greenserve_images", REPO / "tests/harness/images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    module.CACHE = tmp_path / "images"  # type: ignore[attr-defined]
    return module


def layer(images: ModuleType, key: str, what: str, used_at: float) -> Path:
    layers = images.CACHE / "layers"
    layers.mkdir(parents=True, exist_ok=True)
    (layers / f"{key}.tar").write_bytes(b"layer")
    meta = layers / f"{key}.json"
    meta.write_text(json.dumps({"digest": key, "size": 5, "what": what}))
    os.utime(meta, (used_at, used_at))
    return meta


def test_old_layers_of_each_kind_are_pruned_and_the_recent_kept(images: ModuleType) -> None:
    keep = images.KEEP_ARCHIVES
    apps = [layer(images, f"app{i}", "app", 1000.0 + i) for i in range(keep + 3)]
    deps = [layer(images, f"deps{i}", "deps operator/requirements.lock", 2000.0 + i) for i in range(2)]
    images.prune_layers()
    left = sorted(p.stem for p in (images.CACHE / "layers").glob("*.json"))
    assert left == sorted([m.stem for m in apps[-keep:]] + [m.stem for m in deps])
    assert sorted(p.stem for p in (images.CACHE / "layers").glob("*.tar")) == left


def test_a_cache_hit_counts_as_a_use(images: ModuleType) -> None:
    keep = images.KEEP_ARCHIVES
    oldest = layer(images, "old", "app", 1.0)
    for i in range(keep):
        layer(images, f"new{i}", "app", 1000.0 + i)

    def never(_: Path) -> None:
        raise AssertionError("a cached layer is not rebuilt")

    assert images.cached_layer("old", "app", never).digest == "old"
    images.prune_layers()
    assert oldest.exists() and not (images.CACHE / "layers/new0.json").exists()
