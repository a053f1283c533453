"""Artifact store interface and the layout of keys: users/<id>/models/<id>/v<n>/model.dill."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path


def artifact_key(user_id: int, model_id: int, version: int) -> str:
    """Where a version's file lives: stable ids only, never text a user chose (issue 15)."""
    return f"{model_prefix(user_id, model_id)}v{version}/model.dill"


def manifest_key(artifact: str) -> str:
    return artifact.rsplit("/", 1)[0] + "/manifest.json"


def model_prefix(user_id: int, model_id: int) -> str:
    return f"users/{user_id}/models/{model_id}/"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore(ABC):
    """Where model files live. Keys use '/' whatever the backend."""

    @abstractmethod
    def put_file(self, key: str, src: Path) -> None:
        """Store a local file under key, atomically (readers never see half a file)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store a small object."""

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> None:
        """Copy the object to a local file."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a small object."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under prefix."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under prefix, sorted."""

    @abstractmethod
    def check(self) -> None:
        """Raise Unavailable when the store cannot be used."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for messages."""
