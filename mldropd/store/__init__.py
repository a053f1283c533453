"""Artifact stores: a local folder or S3/MinIO, behind one interface."""

from __future__ import annotations

from mldropd.settings import StorageSettings
from mldropd.store.base import ArtifactStore


def make_store(settings: StorageSettings) -> ArtifactStore:
    """The configured store."""
    if settings.kind == "s3":
        from mldropd.store.s3 import S3Store

        return S3Store(settings)
    from mldropd.store.local import LocalStore

    return LocalStore(settings.path)
