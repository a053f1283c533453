"""Artifact store interface and the layout of keys: <user>/<model>/v<n>/model.dill."""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from pathlib import Path

_UNSAFE = re.compile(r"[^a-z0-9._@+-]")


def user_folder(email: str) -> str:
    """The per-user folder name: the email, lower-cased, with unsafe characters replaced."""
    folder = _UNSAFE.sub("_", email.lower()).strip(".")
    return folder or "user"


def artifact_key(email: str, model_name: str, version: int) -> str:
    return f"{model_prefix(email, model_name)}v{version}/model.dill"


def manifest_key(artifact: str) -> str:
    return artifact.rsplit("/", 1)[0] + "/manifest.json"


def model_prefix(email: str, model_name: str) -> str:
    return f"{user_folder(email)}/{model_name}/"


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
