"""Translate spec.model.storageUri into what TF Serving needs: a model base path, volumes and environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from greenserve.api.v1alpha1 import DEFAULT_CREDENTIALS_KEY, S3_MESSAGE, SUPPORTED_SCHEMES

PVC_MOUNT = "/mnt/models"
# Where a gs:// credentials Secret is mounted; GOOGLE_APPLICATION_CREDENTIALS points at its key file.
GCS_CREDENTIALS_MOUNT = "/var/secrets/google"


class UnsupportedStorageError(ValueError):
    """The URI is well formed but no supported backend can serve it."""


@dataclass(frozen=True)
class ModelStorage:
    base_path: str
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)


def resolve(
    storage_uri: str, credentials_secret: str | None = None, credentials_key: str | None = None
) -> ModelStorage:
    """Map a storage URI to TF Serving's --model_base_path plus volumes.

    TF Serving reads gs:// itself (its GCS filesystem), so that passes through, with the credentials
    Secret mounted as a key file; a PVC is mounted read-only; an absolute path is taken to be inside the
    image. s3:// is refused: TF Serving 2.7 and later has no S3 filesystem.
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
    if storage_uri.startswith("s3://"):
        raise UnsupportedStorageError(S3_MESSAGE)
    if storage_uri.startswith("gs://"):
        if storage_uri == "gs://":
            raise UnsupportedStorageError(f"{storage_uri!r}: a bucket is required")
        if not credentials_secret:
            return ModelStorage(base_path=storage_uri)
        key_file = f"{GCS_CREDENTIALS_MOUNT}/{credentials_key or DEFAULT_CREDENTIALS_KEY}"
        return ModelStorage(
            base_path=storage_uri,
            volumes=[{"name": "gcs-credentials", "secret": {"secretName": credentials_secret}}],
            mounts=[{"name": "gcs-credentials", "mountPath": GCS_CREDENTIALS_MOUNT, "readOnly": True}],
            env=[{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": key_file}],
        )
    if storage_uri.startswith("/"):
        return ModelStorage(base_path=storage_uri.rstrip("/") or "/")
    scheme = storage_uri.split("://", 1)[0]
    raise UnsupportedStorageError(
        f"storageUri scheme {scheme!r} is not supported; use one of {', '.join(SUPPORTED_SCHEMES)}"
    )
