"""Translate spec.model.storageUri into what TF Serving needs: a model base path and volumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from greenserve.api.v1alpha1 import SUPPORTED_SCHEMES

PVC_MOUNT = "/mnt/models"


class UnsupportedStorageError(ValueError):
    """The URI is well formed but no supported backend can serve it."""


@dataclass(frozen=True)
class ModelStorage:
    base_path: str
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)


def resolve(storage_uri: str) -> ModelStorage:
    """Map a storage URI to TF Serving's --model_base_path plus volumes.

    TF Serving reads gs:// and s3:// itself (its filesystem plugins), so those pass through; a PVC is
    mounted read-only; an absolute path is taken to be inside the image.
    """
    if storage_uri.startswith("pvc://"):
        rest = storage_uri.removeprefix("pvc://")
        claim, _, sub = rest.partition("/")
        if not claim:
            raise UnsupportedStorageError(
                f"{storage_uri!r}: pvc:// needs a claim name (pvc://<claim>/<path>)"
            )
        return ModelStorage(
            base_path=f"{PVC_MOUNT}/{sub}".rstrip("/"),
            volumes=[
                {"name": "model-store", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
            ],
            mounts=[{"name": "model-store", "mountPath": PVC_MOUNT, "readOnly": True}],
        )
    if storage_uri.startswith(("gs://", "s3://")):
        if len(storage_uri) <= len("gs://") or storage_uri.endswith("://"):
            raise UnsupportedStorageError(f"{storage_uri!r}: a bucket is required")
        return ModelStorage(base_path=storage_uri)
    if storage_uri.startswith("/"):
        return ModelStorage(base_path=storage_uri.rstrip("/") or "/")
    scheme = storage_uri.split("://", 1)[0]
    raise UnsupportedStorageError(
        f"storageUri scheme {scheme!r} is not supported; use one of {', '.join(SUPPORTED_SCHEMES)}"
    )
